/*
 * layout.c: prints the size of every struct of rknn_api_fake.h and the offset
 * and size of each field, one "<struct> <field> <offset> <size>" line each
 * ("<struct> sizeof <size>" for the whole). tests/test_fake_librknnrt.py
 * compares them with the facts file and with the ctypes structures.
 */
#include <stddef.h>
#include <stdio.h>

#include "rknn_api_fake.h"

#define SIZE(S) printf(#S " sizeof %zu\n", sizeof(S))
#define FIELD(S, f) printf(#S " " #f " %zu %zu\n", offsetof(S, f), sizeof(((S *)0)->f))

int main(void)
{
    SIZE(rknn_tensor_attr);
    FIELD(rknn_tensor_attr, index), FIELD(rknn_tensor_attr, n_dims), FIELD(rknn_tensor_attr, dims);
    FIELD(rknn_tensor_attr, name), FIELD(rknn_tensor_attr, n_elems), FIELD(rknn_tensor_attr, size);
    FIELD(rknn_tensor_attr, fmt), FIELD(rknn_tensor_attr, type), FIELD(rknn_tensor_attr, qnt_type);
    FIELD(rknn_tensor_attr, fl), FIELD(rknn_tensor_attr, zp), FIELD(rknn_tensor_attr, scale);
    FIELD(rknn_tensor_attr, w_stride), FIELD(rknn_tensor_attr, size_with_stride);
    FIELD(rknn_tensor_attr, pass_through), FIELD(rknn_tensor_attr, h_stride);
    SIZE(rknn_input);
    FIELD(rknn_input, index), FIELD(rknn_input, buf), FIELD(rknn_input, size);
    FIELD(rknn_input, pass_through), FIELD(rknn_input, type), FIELD(rknn_input, fmt);
    SIZE(rknn_output);
    FIELD(rknn_output, want_float), FIELD(rknn_output, is_prealloc), FIELD(rknn_output, index);
    FIELD(rknn_output, buf), FIELD(rknn_output, size);
    SIZE(rknn_tensor_mem);
    FIELD(rknn_tensor_mem, virt_addr), FIELD(rknn_tensor_mem, phys_addr), FIELD(rknn_tensor_mem, fd);
    FIELD(rknn_tensor_mem, offset), FIELD(rknn_tensor_mem, size), FIELD(rknn_tensor_mem, flags);
    FIELD(rknn_tensor_mem, priv_data);
    SIZE(rknn_sdk_version);
    FIELD(rknn_sdk_version, api_version), FIELD(rknn_sdk_version, drv_version);
    SIZE(rknn_input_output_num);
    FIELD(rknn_input_output_num, n_input), FIELD(rknn_input_output_num, n_output);
    SIZE(rknn_perf_run);
    FIELD(rknn_perf_run, run_duration);
    SIZE(rknn_mem_size);
    FIELD(rknn_mem_size, total_weight_size), FIELD(rknn_mem_size, total_internal_size);
    FIELD(rknn_mem_size, total_dma_allocated_size), FIELD(rknn_mem_size, total_sram_size);
    FIELD(rknn_mem_size, free_sram_size), FIELD(rknn_mem_size, reserved);
    SIZE(rknn_custom_string);
    FIELD(rknn_custom_string, string);
    SIZE(rknn_init_extend);
    FIELD(rknn_init_extend, ctx), FIELD(rknn_init_extend, real_model_offset);
    FIELD(rknn_init_extend, real_model_size), FIELD(rknn_init_extend, model_buffer_fd);
    FIELD(rknn_init_extend, model_buffer_flags), FIELD(rknn_init_extend, reserved);
    SIZE(rknn_run_extend);
    FIELD(rknn_run_extend, frame_id), FIELD(rknn_run_extend, non_block), FIELD(rknn_run_extend, timeout_ms);
    FIELD(rknn_run_extend, fence_fd);
    SIZE(rknn_custom_op_context);
    FIELD(rknn_custom_op_context, target), FIELD(rknn_custom_op_context, internal_ctx);
    FIELD(rknn_custom_op_context, gpu_ctx), FIELD(rknn_custom_op_context, priv_data);
    SIZE(rknn_custom_op_tensor);
    FIELD(rknn_custom_op_tensor, attr), FIELD(rknn_custom_op_tensor, mem);
    SIZE(rknn_custom_op);
    FIELD(rknn_custom_op, version), FIELD(rknn_custom_op, target), FIELD(rknn_custom_op, op_type);
    FIELD(rknn_custom_op, cl_kernel_name), FIELD(rknn_custom_op, cl_kernel_source);
    FIELD(rknn_custom_op, cl_source_size), FIELD(rknn_custom_op, cl_build_options);
    FIELD(rknn_custom_op, init), FIELD(rknn_custom_op, prepare), FIELD(rknn_custom_op, compute);
    FIELD(rknn_custom_op, compute_native), FIELD(rknn_custom_op, destroy);
    return 0;
}
