/*
 * fake_internal.h: what the fake librknnrt's own files share (not part of the API).
 *
 *   model.c    parses a model file ("FKRN 1", see README.md) and does the tensor math
 *   calllog.c  the call log (RKNN_FAKE_CALL_LOG), "E RKNN:" lines, the run faults
 *   fake_rknnrt.c  contexts: rknn_init, dup_context, destroy, query, set_core_mask
 *   fake_run.c     data: inputs_set, run, outputs_get/release, the mems, custom ops
 */
#ifndef FAKE_INTERNAL_H
#define FAKE_INTERNAL_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "rknn_api_fake.h"

#define FAKE_MAX_TENSORS 64
#define FAKE_API_VERSION "2.5.0 (fake librknnrt of rknn-farm)"
#define FAKE_DRV_VERSION "0.9.8"

/* Faults a model file asks for; "after" = how many runs of the loaded model succeed first. */
typedef struct {
    int init_fail;            /* 0: none; else the code rknn_init returns */
    char init_message[512];   /* printed as "E RKNN: [time] <message>" */
    int run_fail, run_fail_after;
    int segfault, segfault_after;
    int hang, hang_after;
    int slow_ms, slow_after;
    int leak_mib, leak_after;
    int perf_run_us;          /* 0: PERF_RUN measures the run; else it reports this */
} fake_faults;

typedef struct {
    rknn_tensor_attr attr; /* as INPUT_ATTR / OUTPUT_ATTR report it (native layout) */
    int source;            /* outputs: -1 = sum of all inputs, i = input i */
    float k;               /* outputs: the factor */
} fake_tensor;

/* A parsed model: shared, refcounted, by the contexts of rknn_dup_context. */
typedef struct {
    int refs;
    uint32_t n_inputs, n_outputs;
    fake_tensor inputs[FAKE_MAX_TENSORS];
    fake_tensor outputs[FAKE_MAX_TENSORS];
    char custom_op[256];       /* "" or the op type the model needs */
    char custom_string[1024];
    fake_faults faults;
    uint32_t model_bytes;
    long runs; /* rknn_run calls so far, all contexts sharing this model together (atomic) */
} fake_model;

typedef struct {
    rknn_tensor_mem *mem;
    rknn_tensor_attr attr; /* the caller's type, fmt and pass_through for the data in mem */
} io_binding;

typedef struct {
    rknn_context id;
    fake_model *model;
    pthread_mutex_t lock;
    uint32_t flag;
    int core_mask;
    void *inputs[FAKE_MAX_TENSORS]; /* model type, native layout */
    int input_set[FAKE_MAX_TENSORS];
    void *outputs[FAKE_MAX_TENSORS]; /* model type, native layout; valid once has_run */
    int has_run;
    io_binding in_mem[FAKE_MAX_TENSORS], out_mem[FAKE_MAX_TENSORS];
    int64_t last_run_us;
    uint64_t dma_bytes;
    rknn_custom_op *ops;
    uint32_t n_ops;
    const rknn_custom_op *model_op; /* the registered op the model needs, NULL if none */
    int model_op_skipped;           /* its init returned RKNN_WARNING_SKIP_CUSTOM_OP_COMPUTE */
    rknn_custom_op_context op_ctx;
} fake_ctx;

/* Owned by the fake: what destroy_mem must undo. */
typedef struct {
    void *map_base;
    size_t map_length;
    void *heap;
} mem_private;

#define EXPORT __attribute__((visibility("default")))

/* fake_rknnrt.c: the context of a handle, or NULL with an E RKNN line naming `function`. */
fake_ctx *fake_find(rknn_context id, const char *function);

/* model.c */
int fake_model_parse(const char *text, size_t size, fake_model *model, char *why, size_t why_size);
size_t fake_type_size(int type);
const char *fake_type_name(int type);
int fake_type_supported(int type);
float fake_get(int type, const void *data, size_t i);
void fake_put(int type, void *data, size_t i, float value);
float fake_dequant(const rknn_tensor_attr *attr, float q);
float fake_quant(const rknn_tensor_attr *attr, float value);
void fake_compute(const fake_model *model, float *const *inputs, float *const *outputs);
int fake_is_nchw_nhwc_pair(const rknn_tensor_attr *attr, int other_fmt);
void fake_transpose(const rknn_tensor_attr *attr, int from_fmt, const void *src, void *dst, size_t esize);
void fake_nhwc_attr(const rknn_tensor_attr *native, rknn_tensor_attr *out);

/* calllog.c */
void fake_log(const char *format, ...) __attribute__((format(printf, 1, 2)));
void fake_error(const char *format, ...) __attribute__((format(printf, 1, 2)));
int fake_before_run(const fake_faults *faults, long run_number);

#endif /* FAKE_INTERNAL_H */
