/*
 * rknn_api_fake.h: rknn-farm's OWN declarations of the part of the RKNN C API
 * (librknnrt) that RKNNLite 2.5.0 and rknn-farm call.
 *
 * Written from the sizes, offsets and constants measured by compiling a
 * program against Rockchip's rknn_api.h and rknn_custom_op.h (SDK 2.3.2);
 * not copied from those proprietary headers. The layouts are checked by
 * tests/test_fake_librknnrt.py (layout.c prints them; the test compares them
 * with the facts and with the ctypes structures of
 * workers/backends/rknn_runtime.py). Only for the FAKE runtime of the tests.
 */
#ifndef RKNN_API_FAKE_H
#define RKNN_API_FAKE_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* A context handle: 64 bits on 64-bit targets, 32 on 32-bit ARM. */
#if defined(__aarch64__) || defined(__x86_64__)
typedef uint64_t rknn_context;
#else
typedef uint32_t rknn_context;
#endif

/* ── return codes ─────────────────────────────────────────────────────── */
#define RKNN_SUCC 0
#define RKNN_ERR_FAIL -1
#define RKNN_ERR_TIMEOUT -2
#define RKNN_ERR_DEVICE_UNAVAILABLE -3
#define RKNN_ERR_MALLOC_FAIL -4
#define RKNN_ERR_PARAM_INVALID -5
#define RKNN_ERR_MODEL_INVALID -6
#define RKNN_ERR_CTX_INVALID -7
#define RKNN_ERR_INPUT_INVALID -8
#define RKNN_ERR_OUTPUT_INVALID -9
#define RKNN_ERR_DEVICE_UNMATCH -10
#define RKNN_ERR_TARGET_PLATFORM_UNMATCH -13
/* A custom op's init may return this: the runtime keeps its own implementation. */
#define RKNN_WARNING_SKIP_CUSTOM_OP_COMPUTE -14

/* ── limits ───────────────────────────────────────────────────────────── */
#define RKNN_MAX_DIMS 16
#define RKNN_MAX_NAME_LEN 256

/* ── rknn_init flags ──────────────────────────────────────────────────── */
#define RKNN_FLAG_COLLECT_PERF_MASK 0x8
#define RKNN_FLAG_MEM_ALLOC_OUTSIDE 0x10
#define RKNN_FLAG_SHARE_WEIGHT_MEM 0x20
#define RKNN_FLAG_INTERNAL_ALLOC_OUTSIDE 0x200
#define RKNN_FLAG_EXECUTE_FALLBACK_PRIOR_DEVICE_GPU 0x400
#define RKNN_FLAG_ENABLE_SRAM 0x800
#define RKNN_FLAG_DISABLE_PROC_HIGH_PRIORITY 0x2000
#define RKNN_FLAG_MODEL_BUFFER_ZERO_COPY 0x10000

/* ── rknn_query commands ──────────────────────────────────────────────── */
typedef enum {
    RKNN_QUERY_IN_OUT_NUM = 0,
    RKNN_QUERY_INPUT_ATTR = 1,
    RKNN_QUERY_OUTPUT_ATTR = 2,
    RKNN_QUERY_PERF_DETAIL = 3,
    RKNN_QUERY_PERF_RUN = 4,
    RKNN_QUERY_SDK_VERSION = 5,
    RKNN_QUERY_MEM_SIZE = 6,
    RKNN_QUERY_CUSTOM_STRING = 7,
    RKNN_QUERY_NATIVE_INPUT_ATTR = 8,
    RKNN_QUERY_NATIVE_OUTPUT_ATTR = 9,
    RKNN_QUERY_NATIVE_NHWC_INPUT_ATTR = 10,
    RKNN_QUERY_NATIVE_NHWC_OUTPUT_ATTR = 11,
    RKNN_QUERY_DEVICE_MEM_INFO = 12,
    RKNN_QUERY_INPUT_DYNAMIC_RANGE = 13,
    RKNN_QUERY_CURRENT_INPUT_ATTR = 14,
    RKNN_QUERY_CURRENT_OUTPUT_ATTR = 15,
} rknn_query_cmd;

/* ── core masks ───────────────────────────────────────────────────────── */
typedef enum {
    RKNN_NPU_CORE_AUTO = 0,
    RKNN_NPU_CORE_0 = 1,
    RKNN_NPU_CORE_1 = 2,
    RKNN_NPU_CORE_2 = 4,
    RKNN_NPU_CORE_0_1 = 3,
    RKNN_NPU_CORE_0_1_2 = 7,
    RKNN_NPU_CORE_ALL = 0xffff,
} rknn_core_mask;

/* ── tensors ──────────────────────────────────────────────────────────── */
typedef enum {
    RKNN_TENSOR_FLOAT32 = 0,
    RKNN_TENSOR_FLOAT16 = 1,
    RKNN_TENSOR_INT8 = 2,
    RKNN_TENSOR_UINT8 = 3,
    RKNN_TENSOR_INT16 = 4,
    RKNN_TENSOR_UINT16 = 5,
    RKNN_TENSOR_INT32 = 6,
    RKNN_TENSOR_UINT32 = 7,
    RKNN_TENSOR_INT64 = 8,
    RKNN_TENSOR_BOOL = 9,
    RKNN_TENSOR_INT4 = 10,
    RKNN_TENSOR_BFLOAT16 = 11,
    RKNN_TENSOR_TYPE_MAX
} rknn_tensor_type;

typedef enum {
    RKNN_TENSOR_NCHW = 0,
    RKNN_TENSOR_NHWC = 1,
    RKNN_TENSOR_NC1HWC2 = 2,
    RKNN_TENSOR_UNDEFINED = 3,
    RKNN_TENSOR_FORMAT_MAX
} rknn_tensor_format;

typedef enum {
    RKNN_TENSOR_QNT_NONE = 0,
    RKNN_TENSOR_QNT_DFP = 1,
    RKNN_TENSOR_QNT_AFFINE_ASYMMETRIC = 2,
    RKNN_TENSOR_QNT_MAX
} rknn_tensor_qnt_type;

/* 376 bytes. */
typedef struct {
    uint32_t index;
    uint32_t n_dims;
    uint32_t dims[RKNN_MAX_DIMS];
    char name[RKNN_MAX_NAME_LEN];
    uint32_t n_elems;
    uint32_t size;
    rknn_tensor_format fmt;
    rknn_tensor_type type;
    rknn_tensor_qnt_type qnt_type;
    int8_t fl;
    int32_t zp;
    float scale;
    uint32_t w_stride;
    uint32_t size_with_stride;
    uint8_t pass_through;
    uint32_t h_stride;
} rknn_tensor_attr;

/* 8 bytes. */
typedef struct {
    uint32_t n_input;
    uint32_t n_output;
} rknn_input_output_num;

/* 512 bytes. */
typedef struct {
    char api_version[256];
    char drv_version[256];
} rknn_sdk_version;

/* 8 bytes: microseconds of the last rknn_run. */
typedef struct {
    int64_t run_duration;
} rknn_perf_run;

/* 64 bytes. */
typedef struct {
    uint32_t total_weight_size;
    uint32_t total_internal_size;
    uint64_t total_dma_allocated_size;
    uint32_t total_sram_size;
    uint32_t free_sram_size;
    uint32_t reserved[10];
} rknn_mem_size;

/* 1024 bytes. */
typedef struct {
    char string[1024];
} rknn_custom_string;

/* 40 bytes. */
typedef struct {
    void *virt_addr;
    uint64_t phys_addr;
    int32_t fd;
    int32_t offset;
    uint32_t size;
    uint32_t flags;
    void *priv_data;
} rknn_tensor_mem;

/* 32 bytes. */
typedef struct {
    uint32_t index;
    void *buf;
    uint32_t size;
    uint8_t pass_through;
    rknn_tensor_type type;
    rknn_tensor_format fmt;
} rknn_input;

/* 24 bytes. */
typedef struct {
    uint8_t want_float;
    uint8_t is_prealloc;
    uint32_t index;
    void *buf;
    uint32_t size;
} rknn_output;

/* Not in the facts file: the fake never reads it (declared opaque on purpose). */
typedef struct rknn_output_extend rknn_output_extend;

/* 136 bytes. */
typedef struct {
    rknn_context ctx;
    int32_t real_model_offset;
    uint32_t real_model_size;
    int32_t model_buffer_fd;
    uint32_t model_buffer_flags;
    uint8_t reserved[112];
} rknn_init_extend;

/* 24 bytes. */
typedef struct {
    uint64_t frame_id;
    int32_t non_block;
    int32_t timeout_ms;
    int32_t fence_fd;
} rknn_run_extend;

/* ── custom operators ─────────────────────────────────────────────────── */
typedef enum {
    RKNN_TARGET_TYPE_CPU = 1,
    RKNN_TARGET_TYPE_GPU = 2,
} rknn_target_type;

typedef struct {
    void *cl_context;
    void *cl_command_queue;
    void *cl_kernel;
} rknn_gpu_op_context;

/* 48 bytes. */
typedef struct {
    rknn_target_type target;
    uint64_t internal_ctx;
    rknn_gpu_op_context gpu_ctx;
    void *priv_data;
} rknn_custom_op_context;

/* 416 bytes: data at mem.virt_addr + mem.offset. */
typedef struct {
    rknn_tensor_attr attr;
    rknn_tensor_mem mem;
} rknn_custom_op_tensor;

typedef int (*rknn_custom_op_fn)(rknn_custom_op_context *op_ctx, rknn_custom_op_tensor *inputs,
                                 uint32_t n_inputs, rknn_custom_op_tensor *outputs, uint32_t n_outputs);
typedef int (*rknn_custom_op_destroy_fn)(rknn_custom_op_context *op_ctx);

/* 832 bytes. */
typedef struct {
    uint32_t version;
    rknn_target_type target;
    char op_type[256];
    char cl_kernel_name[256];
    char *cl_kernel_source;
    uint64_t cl_source_size;
    char cl_build_options[256];
    rknn_custom_op_fn init;
    rknn_custom_op_fn prepare;
    rknn_custom_op_fn compute;
    rknn_custom_op_fn compute_native;
    rknn_custom_op_destroy_fn destroy;
} rknn_custom_op;

/* ── functions ────────────────────────────────────────────────────────── */
int rknn_init(rknn_context *context, void *model, uint32_t size, uint32_t flag, rknn_init_extend *extend);
int rknn_dup_context(rknn_context *context_in, rknn_context *context_out);
int rknn_destroy(rknn_context context);
int rknn_query(rknn_context context, rknn_query_cmd cmd, void *info, uint32_t size);
int rknn_set_core_mask(rknn_context context, rknn_core_mask core_mask);
int rknn_set_input_shapes(rknn_context context, uint32_t n_inputs, rknn_tensor_attr attr[]);
int rknn_inputs_set(rknn_context context, uint32_t n_inputs, rknn_input inputs[]);
int rknn_run(rknn_context context, rknn_run_extend *extend);
int rknn_outputs_get(rknn_context context, uint32_t n_outputs, rknn_output outputs[],
                     rknn_output_extend *extend);
int rknn_outputs_release(rknn_context context, uint32_t n_outputs, rknn_output outputs[]);
rknn_tensor_mem *rknn_create_mem(rknn_context context, uint32_t size);
rknn_tensor_mem *rknn_create_mem_from_fd(rknn_context context, int32_t fd, void *virt_addr, uint32_t size,
                                         int32_t offset);
int rknn_destroy_mem(rknn_context context, rknn_tensor_mem *mem);
int rknn_set_io_mem(rknn_context context, rknn_tensor_mem *mem, rknn_tensor_attr *attr);
int rknn_register_custom_ops(rknn_context context, rknn_custom_op *ops, uint32_t n_ops);

#ifdef __cplusplus
}
#endif
#endif /* RKNN_API_FAKE_H */
