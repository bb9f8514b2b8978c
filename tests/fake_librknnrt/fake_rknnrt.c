/*
 * fake_rknnrt.c: the exported rknn_* functions of the FAKE librknnrt (for
 * tests and CI, never a runtime: it runs our own "FKRN" model files, not
 * .rknn models; see README.md).
 *
 * A context (rknn_context is a handle: an id in a table, never reused) owns
 * its input and output buffers, kept in each tensor's model type and native
 * layout. rknn_init parses a model; rknn_dup_context and rknn_init with
 * RKNN_FLAG_SHARE_WEIGHT_MEM share it (refcounted). The table has its own
 * lock and every context one of its own, so contexts in different threads
 * run at the same time; destroying a context while another thread uses it is
 * undefined, as with the real runtime.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "fake_internal.h"

#define MAX_CONTEXTS 4096

static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;
static fake_ctx *table[MAX_CONTEXTS];
static rknn_context last_id;

/* ── contexts ───────────────────────────────────────────────────────────── */
fake_ctx *fake_find(rknn_context id, const char *function)
{
    fake_ctx *found = NULL;
    pthread_mutex_lock(&table_lock);
    for (int i = 0; i < MAX_CONTEXTS && !found; i++)
        if (table[i] && table[i]->id == id)
            found = table[i];
    pthread_mutex_unlock(&table_lock);
    if (!found)
        fake_error("%s: invalid context %llu (never created, or destroyed)", function, (unsigned long long)id);
    return found;
}

static int add(fake_ctx *c)
{
    int slot = -1;
    pthread_mutex_lock(&table_lock);
    for (int i = 0; i < MAX_CONTEXTS && slot < 0; i++)
        if (!table[i])
            slot = i;
    if (slot >= 0) {
        c->id = ++last_id;
        table[slot] = c;
    }
    pthread_mutex_unlock(&table_lock);
    if (slot < 0)
        fake_error("rknn_init: more than %d contexts at once", MAX_CONTEXTS);
    return slot < 0 ? RKNN_ERR_MALLOC_FAIL : RKNN_SUCC;
}

static void release_model(fake_model *model)
{
    if (__atomic_sub_fetch(&model->refs, 1, __ATOMIC_SEQ_CST) == 0)
        free(model);
}

static void free_ctx(fake_ctx *c)
{
    for (uint32_t i = 0; i < FAKE_MAX_TENSORS; i++) {
        free(c->inputs[i]);
        free(c->outputs[i]);
    }
    if (c->model_op && c->model_op->destroy && !c->model_op_skipped)
        c->model_op->destroy(&c->op_ctx);
    free(c->ops);
    pthread_mutex_destroy(&c->lock);
    release_model(c->model);
    free(c);
}

/* A new context on `model` (whose reference it takes over); its id into *context. */
static int new_ctx(fake_model *model, uint32_t flag, rknn_context *context)
{
    fake_ctx *c = calloc(1, sizeof *c);
    int status = c ? RKNN_SUCC : RKNN_ERR_MALLOC_FAIL;
    if (!c) {
        release_model(model);
        return status;
    }
    c->model = model;
    c->flag = flag;
    pthread_mutex_init(&c->lock, NULL);
    for (uint32_t i = 0; i < model->n_inputs && !status; i++)
        if (!(c->inputs[i] = calloc(1, model->inputs[i].attr.size)))
            status = RKNN_ERR_MALLOC_FAIL;
    for (uint32_t j = 0; j < model->n_outputs && !status; j++)
        if (!(c->outputs[j] = calloc(1, model->outputs[j].attr.size)))
            status = RKNN_ERR_MALLOC_FAIL;
    if (!status)
        status = add(c);
    if (status) {
        free_ctx(c);
        return status;
    }
    *context = c->id;
    return RKNN_SUCC;
}

/* ── rknn_init and friends ──────────────────────────────────────────────── */
static char *read_file(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    char *data = NULL;
    long length;
    if (!f)
        return NULL;
    if (fseek(f, 0, SEEK_END) == 0 && (length = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0 &&
        (data = malloc((size_t)length + 1)) && fread(data, 1, (size_t)length, f) == (size_t)length) {
        *size = (size_t)length;
    } else {
        free(data);
        data = NULL;
    }
    fclose(f);
    return data;
}

/* Each line of text as an "E RKNN:" line. */
static void print_lines(const char *text)
{
    char copy[512], *save = NULL;
    snprintf(copy, sizeof copy, "%s", text);
    for (char *line = strtok_r(copy, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
        fake_error("%s", line);
}

/* The model of `bytes` (size 0: a path), parsed, or NULL with the E RKNN lines printed. */
static fake_model *load_model(void *bytes, uint32_t size, int *status)
{
    char why[512] = "", *text = bytes;
    size_t length = size;
    fake_model *model = calloc(1, sizeof *model);
    *status = RKNN_ERR_MODEL_INVALID;
    if (!model || !bytes) {
        fake_error("rknn_init: %s", bytes ? "out of memory" : "the model pointer is NULL");
        free(model);
        return NULL;
    }
    if (size == 0 && !(text = read_file(bytes, &length))) {
        fake_error("rknn_init: cannot read the model file %s: %s", (const char *)bytes, strerror(errno));
        free(model);
        return NULL;
    }
    if (fake_model_parse(text, length, model, why, sizeof why) != 0) {
        fake_error("rknn_init: invalid model (this fake runs only models written by fake_model.py)");
        fake_error("%s", why);
        free(model);
        model = NULL;
    } else {
        model->refs = 1;
        *status = RKNN_SUCC;
    }
    if (text != bytes)
        free(text);
    return model;
}

/* With RKNN_FLAG_SHARE_WEIGHT_MEM and extend->ctx, the model of that context (*status set to
 * RKNN_ERR_CTX_INVALID when it does not exist); else NULL. */
static fake_model *shared_model(uint32_t flag, const rknn_init_extend *extend, int *status)
{
    fake_ctx *source;
    *status = RKNN_SUCC;
    if (!(flag & RKNN_FLAG_SHARE_WEIGHT_MEM) || !extend || !extend->ctx)
        return NULL;
    if (!(source = fake_find(extend->ctx, "rknn_init(RKNN_FLAG_SHARE_WEIGHT_MEM)"))) {
        *status = RKNN_ERR_CTX_INVALID;
        return NULL;
    }
    __atomic_add_fetch(&source->model->refs, 1, __ATOMIC_SEQ_CST);
    return source->model;
}

EXPORT int rknn_init(rknn_context *context, void *model_data, uint32_t size, uint32_t flag,
                     rknn_init_extend *extend)
{
    int status;
    const char *source = size ? "bytes" : "path";
    fake_model *model;
    if (!context) {
        fake_error("rknn_init: the context pointer is NULL");
        return RKNN_ERR_PARAM_INVALID;
    }
    *context = 0;
    if ((model = shared_model(flag, extend, &status)))
        source = "shared";
    else if (status || !(model = load_model(model_data, size, &status))) {
        fake_log("call=init source=%s flag=0x%x size=%u status=%d", source, flag, size, status);
        return status;
    }
    if (model->faults.init_fail) {
        print_lines(model->faults.init_message[0] ? model->faults.init_message
                                                  : "rknn_init: failure requested by the fake model file (init_fail)");
        status = model->faults.init_fail;
        release_model(model);
        fake_log("call=init source=%s flag=0x%x size=%u status=%d", source, flag, size, status);
        return status;
    }
    status = new_ctx(model, flag, context);
    fake_log("call=init source=%s flag=0x%x size=%u ctx=%llu status=%d", source, flag, size,
             (unsigned long long)*context, status);
    return status;
}

EXPORT int rknn_dup_context(rknn_context *context_in, rknn_context *context_out)
{
    fake_ctx *c;
    int status;
    if (!context_in || !context_out) {
        fake_error("rknn_dup_context: both arguments must point to a rknn_context");
        return RKNN_ERR_PARAM_INVALID;
    }
    if (!(c = fake_find(*context_in, "rknn_dup_context")))
        return RKNN_ERR_CTX_INVALID;
    __atomic_add_fetch(&c->model->refs, 1, __ATOMIC_SEQ_CST);
    status = new_ctx(c->model, c->flag, context_out);
    fake_log("call=dup_context from=%llu ctx=%llu model_refs=%d status=%d", (unsigned long long)c->id,
             (unsigned long long)*context_out, __atomic_load_n(&c->model->refs, __ATOMIC_SEQ_CST), status);
    return status;
}

EXPORT int rknn_destroy(rknn_context context)
{
    fake_ctx *c = NULL;
    pthread_mutex_lock(&table_lock);
    for (int i = 0; i < MAX_CONTEXTS && !c; i++)
        if (table[i] && table[i]->id == context) {
            c = table[i];
            table[i] = NULL;
        }
    pthread_mutex_unlock(&table_lock);
    if (!c) {
        fake_error("rknn_destroy: invalid context %llu", (unsigned long long)context);
        return RKNN_ERR_CTX_INVALID;
    }
    fake_log("call=destroy ctx=%llu", (unsigned long long)context);
    free_ctx(c);
    return RKNN_SUCC;
}

EXPORT int rknn_set_core_mask(rknn_context context, rknn_core_mask mask)
{
    fake_ctx *c = fake_find(context, "rknn_set_core_mask");
    int valid = mask == RKNN_NPU_CORE_AUTO || mask == RKNN_NPU_CORE_0 || mask == RKNN_NPU_CORE_1 ||
                mask == RKNN_NPU_CORE_2 || mask == RKNN_NPU_CORE_0_1 || mask == RKNN_NPU_CORE_0_1_2 ||
                mask == RKNN_NPU_CORE_ALL;
    if (!c)
        return RKNN_ERR_CTX_INVALID;
    fake_log("call=set_core_mask ctx=%llu mask=%d status=%d", (unsigned long long)context, (int)mask,
             valid ? 0 : RKNN_ERR_PARAM_INVALID);
    if (!valid) {
        fake_error("rknn_set_core_mask: invalid core mask %d (0, 1, 2, 4, 3, 7 or 0xffff)", (int)mask);
        return RKNN_ERR_PARAM_INVALID;
    }
    c->core_mask = (int)mask;
    return RKNN_SUCC;
}

EXPORT int rknn_set_input_shapes(rknn_context context, uint32_t n_inputs, rknn_tensor_attr attr[])
{
    (void)n_inputs, (void)attr;
    if (!fake_find(context, "rknn_set_input_shapes"))
        return RKNN_ERR_CTX_INVALID;
    fake_log("call=set_input_shapes ctx=%llu status=%d", (unsigned long long)context, RKNN_ERR_FAIL);
    fake_error("rknn_set_input_shapes: the model has static input shapes (fake models are never dynamic)");
    return RKNN_ERR_FAIL;
}

/* ── rknn_query ─────────────────────────────────────────────────────────── */
static const char *const QUERY_NAMES[] = {
    "IN_OUT_NUM",      "INPUT_ATTR",         "OUTPUT_ATTR",          "PERF_DETAIL",
    "PERF_RUN",        "SDK_VERSION",        "MEM_SIZE",             "CUSTOM_STRING",
    "NATIVE_INPUT_ATTR", "NATIVE_OUTPUT_ATTR", "NATIVE_NHWC_INPUT_ATTR", "NATIVE_NHWC_OUTPUT_ATTR",
    "DEVICE_MEM_INFO", "INPUT_DYNAMIC_RANGE", "CURRENT_INPUT_ATTR",   "CURRENT_OUTPUT_ATTR"};

static int query_attr(const fake_ctx *c, int cmd, rknn_tensor_attr *info)
{
    int output = cmd == RKNN_QUERY_OUTPUT_ATTR || cmd == RKNN_QUERY_NATIVE_OUTPUT_ATTR ||
                 cmd == RKNN_QUERY_NATIVE_NHWC_OUTPUT_ATTR || cmd == RKNN_QUERY_CURRENT_OUTPUT_ATTR;
    uint32_t n = output ? c->model->n_outputs : c->model->n_inputs, index = info->index;
    const fake_tensor *tensors = output ? c->model->outputs : c->model->inputs;
    if (index >= n) {
        fake_error("rknn_query(RKNN_QUERY_%s): index %u out of range, the model has %u %s", QUERY_NAMES[cmd],
                   index, n, output ? "outputs" : "inputs");
        return RKNN_ERR_PARAM_INVALID;
    }
    /* The fake's tensors are stored in their native layout, which INPUT_ATTR reports too (as the
     * real runtime reports a 4-D image input in NHWC); only the NHWC queries permute NCHW. */
    if (cmd == RKNN_QUERY_NATIVE_NHWC_INPUT_ATTR || cmd == RKNN_QUERY_NATIVE_NHWC_OUTPUT_ATTR)
        fake_nhwc_attr(&tensors[index].attr, info);
    else
        *info = tensors[index].attr;
    return RKNN_SUCC;
}

static void query_mem_size(const fake_ctx *c, rknn_mem_size *info)
{
    uint32_t internal = 0;
    memset(info, 0, sizeof *info);
    for (uint32_t i = 0; i < c->model->n_inputs; i++)
        internal += c->model->inputs[i].attr.size;
    for (uint32_t j = 0; j < c->model->n_outputs; j++)
        internal += c->model->outputs[j].attr.size;
    info->total_weight_size = c->model->model_bytes;
    info->total_internal_size = internal;
    info->total_dma_allocated_size = c->dma_bytes + internal;
}

/* The size of what each command writes (0: not implemented by the fake). */
static uint32_t query_size(int cmd)
{
    switch (cmd) {
    case RKNN_QUERY_IN_OUT_NUM: return sizeof(rknn_input_output_num);
    case RKNN_QUERY_PERF_RUN: return sizeof(rknn_perf_run);
    case RKNN_QUERY_SDK_VERSION: return sizeof(rknn_sdk_version);
    case RKNN_QUERY_MEM_SIZE: return sizeof(rknn_mem_size);
    case RKNN_QUERY_CUSTOM_STRING: return sizeof(rknn_custom_string);
    case RKNN_QUERY_INPUT_ATTR: case RKNN_QUERY_OUTPUT_ATTR:
    case RKNN_QUERY_NATIVE_INPUT_ATTR: case RKNN_QUERY_NATIVE_OUTPUT_ATTR:
    case RKNN_QUERY_NATIVE_NHWC_INPUT_ATTR: case RKNN_QUERY_NATIVE_NHWC_OUTPUT_ATTR:
    case RKNN_QUERY_CURRENT_INPUT_ATTR: case RKNN_QUERY_CURRENT_OUTPUT_ATTR:
        return sizeof(rknn_tensor_attr);
    case RKNN_QUERY_INPUT_DYNAMIC_RANGE: return 1;
    default: return 0;
    }
}

static int answer(const fake_ctx *c, int cmd, void *info)
{
    switch (cmd) {
    case RKNN_QUERY_IN_OUT_NUM:
        ((rknn_input_output_num *)info)->n_input = c->model->n_inputs;
        ((rknn_input_output_num *)info)->n_output = c->model->n_outputs;
        return RKNN_SUCC;
    case RKNN_QUERY_PERF_RUN:
        ((rknn_perf_run *)info)->run_duration =
            c->model->faults.perf_run_us > 0 ? c->model->faults.perf_run_us : c->last_run_us;
        return RKNN_SUCC;
    case RKNN_QUERY_SDK_VERSION:
        snprintf(((rknn_sdk_version *)info)->api_version, 256, "%s", FAKE_API_VERSION);
        snprintf(((rknn_sdk_version *)info)->drv_version, 256, "%s", FAKE_DRV_VERSION);
        return RKNN_SUCC;
    case RKNN_QUERY_MEM_SIZE:
        query_mem_size(c, info);
        return RKNN_SUCC;
    case RKNN_QUERY_CUSTOM_STRING:
        snprintf(((rknn_custom_string *)info)->string, 1024, "%s", c->model->custom_string);
        return RKNN_SUCC;
    case RKNN_QUERY_INPUT_DYNAMIC_RANGE:
        /* Fake models have static shapes; RKNNLite logs its "W Query dynamic range failed" line. */
        return RKNN_ERR_FAIL;
    default:
        return query_attr(c, cmd, info);
    }
}

EXPORT int rknn_query(rknn_context context, rknn_query_cmd cmd, void *info, uint32_t size)
{
    fake_ctx *c = fake_find(context, "rknn_query");
    uint32_t needed = query_size((int)cmd);
    int status;
    if (!c)
        return RKNN_ERR_CTX_INVALID;
    if (!needed) {
        fake_error("rknn_query: command %d is not implemented by the fake librknnrt", (int)cmd);
        status = RKNN_ERR_PARAM_INVALID;
    } else if (!info || size < needed) {
        fake_error("rknn_query(RKNN_QUERY_%s): info is NULL or %u bytes, %u needed", QUERY_NAMES[cmd], size,
                   needed);
        status = RKNN_ERR_PARAM_INVALID;
    } else {
        pthread_mutex_lock(&c->lock);
        status = answer(c, (int)cmd, info);
        pthread_mutex_unlock(&c->lock);
    }
    fake_log("call=query ctx=%llu cmd=%d size=%u status=%d", (unsigned long long)context, (int)cmd, size,
             status);
    return status;
}
