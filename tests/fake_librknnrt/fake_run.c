/*
 * fake_run.c: the data path of the fake librknnrt: rknn_inputs_set, rknn_run,
 * rknn_outputs_get/_release, the tensor mems (rknn_create_mem, _from_fd,
 * rknn_set_io_mem, rknn_destroy_mem) and rknn_register_custom_ops.
 *
 *   caller's data (its type, fmt) ──inputs_set / bound mem──► ctx->inputs (model type, native layout)
 *   ctx->inputs ──built-in math, or the model's custom op──► ctx->outputs (model type, native layout)
 *   ctx->outputs ──outputs_get (float32 when want_float) / bound mem──► the caller
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "fake_internal.h"

/* ── inputs ─────────────────────────────────────────────────────────────── */
/* Into ctx->inputs[i]: raw when pass_through, else converted from the caller's type and fmt
 * (NCHW data for an NHWC-native input is transposed, as the real runtime does). */
static int set_input(fake_ctx *c, uint32_t i, const void *buf, uint32_t size, int pass_through, int type,
                     int fmt, const char *function)
{
    const rknn_tensor_attr *attr = &c->model->inputs[i].attr;
    size_t n = attr->n_elems, needed = pass_through ? attr->size : n * fake_type_size(type);
    float *values, *native;
    if (!pass_through && !fake_type_supported(type)) {
        fake_error("%s: input %u (%s): unsupported type %d", function, i, attr->name, type);
        return RKNN_ERR_PARAM_INVALID;
    }
    if (!buf || size < needed) {
        fake_error("%s: input %u (%s): buffer of %u bytes, %zu needed (%zu elements of %s%s)", function, i,
                   attr->name, buf ? size : 0, needed, n, fake_type_name(pass_through ? (int)attr->type : type),
                   pass_through ? ", pass_through" : "");
        return RKNN_ERR_PARAM_INVALID;
    }
    if (pass_through) {
        memcpy(c->inputs[i], buf, attr->size);
        return RKNN_SUCC;
    }
    values = malloc(n * sizeof *values);
    native = malloc(n * sizeof *native);
    if (!values || !native) {
        free(values), free(native);
        return RKNN_ERR_MALLOC_FAIL;
    }
    for (size_t e = 0; e < n; e++)
        values[e] = fake_get(type, buf, e);
    if (fake_is_nchw_nhwc_pair(attr, fmt))
        fake_transpose(attr, fmt, values, native, sizeof *values);
    else
        memcpy(native, values, n * sizeof *values);
    for (size_t e = 0; e < n; e++)
        fake_put(attr->type, c->inputs[i], e, fake_quant(attr, native[e]));
    free(values), free(native);
    return RKNN_SUCC;
}

EXPORT int rknn_inputs_set(rknn_context context, uint32_t n_inputs, rknn_input inputs[])
{
    fake_ctx *c = fake_find(context, "rknn_inputs_set");
    int status = RKNN_SUCC;
    if (!c)
        return RKNN_ERR_CTX_INVALID;
    pthread_mutex_lock(&c->lock);
    if (!inputs || n_inputs == 0 || n_inputs > c->model->n_inputs) {
        fake_error("rknn_inputs_set: %u inputs given, the model has %u", inputs ? n_inputs : 0,
                   c->model->n_inputs);
        status = RKNN_ERR_PARAM_INVALID;
    }
    for (uint32_t k = 0; k < n_inputs && !status; k++) {
        const rknn_input *in = &inputs[k];
        if (in->index >= c->model->n_inputs) {
            fake_error("rknn_inputs_set: input index %u out of range (%u inputs)", in->index, c->model->n_inputs);
            status = RKNN_ERR_PARAM_INVALID;
            break;
        }
        status = set_input(c, in->index, in->buf, in->size, in->pass_through, in->type, in->fmt,
                           "rknn_inputs_set");
        c->input_set[in->index] = !status;
        fake_log("call=inputs_set ctx=%llu index=%u type=%d fmt=%d pass_through=%d size=%u status=%d",
                 (unsigned long long)context, in->index, (int)in->type, (int)in->fmt, in->pass_through,
                 in->size, status);
    }
    pthread_mutex_unlock(&c->lock);
    return status;
}

/* ── outputs ────────────────────────────────────────────────────────────── */
/* ctx->outputs[j] into dst as `type` (FP32: dequantized; the model's type: raw) and `fmt`. */
static int get_output(const fake_ctx *c, uint32_t j, void *dst, int type, int fmt)
{
    const rknn_tensor_attr *attr = &c->model->outputs[j].attr;
    size_t n = attr->n_elems, esize = fake_type_size(type);
    char *native = malloc(n * esize);
    if (!native)
        return RKNN_ERR_MALLOC_FAIL;
    if (type == (int)attr->type && attr->type != RKNN_TENSOR_FLOAT32)
        memcpy(native, c->outputs[j], attr->size);
    else
        for (size_t e = 0; e < n; e++)
            ((float *)native)[e] = fake_dequant(attr, fake_get(attr->type, c->outputs[j], e));
    if (fake_is_nchw_nhwc_pair(attr, fmt))
        fake_transpose(attr, attr->fmt, native, dst, esize);
    else
        memcpy(dst, native, n * esize);
    free(native);
    return RKNN_SUCC;
}

static int output_for(fake_ctx *c, rknn_output *out)
{
    const rknn_tensor_attr *attr;
    int type;
    uint32_t needed;
    if (out->index >= c->model->n_outputs) {
        fake_error("rknn_outputs_get: output index %u out of range (%u outputs)", out->index,
                   c->model->n_outputs);
        return RKNN_ERR_PARAM_INVALID;
    }
    attr = &c->model->outputs[out->index].attr;
    type = out->want_float ? RKNN_TENSOR_FLOAT32 : (int)attr->type;
    needed = attr->n_elems * (uint32_t)fake_type_size(type);
    if (out->is_prealloc && (!out->buf || out->size < needed)) {
        fake_error("rknn_outputs_get: output %u (%s): preallocated buffer of %u bytes, %u needed", out->index,
                   attr->name, out->buf ? out->size : 0, needed);
        return RKNN_ERR_PARAM_INVALID;
    }
    if (!out->is_prealloc) {
        /* Library-owned: rknn_outputs_release frees it. */
        if (!(out->buf = malloc(needed)))
            return RKNN_ERR_MALLOC_FAIL;
        out->size = needed;
    }
    return get_output(c, out->index, out->buf, type, attr->fmt);
}

EXPORT int rknn_outputs_get(rknn_context context, uint32_t n_outputs, rknn_output outputs[],
                            rknn_output_extend *extend)
{
    fake_ctx *c = fake_find(context, "rknn_outputs_get");
    int status = RKNN_SUCC;
    (void)extend;
    if (!c)
        return RKNN_ERR_CTX_INVALID;
    pthread_mutex_lock(&c->lock);
    if (!c->has_run) {
        fake_error("rknn_outputs_get: no rknn_run has succeeded on this context yet");
        status = RKNN_ERR_OUTPUT_INVALID;
    } else if (!outputs || n_outputs == 0 || n_outputs > c->model->n_outputs) {
        fake_error("rknn_outputs_get: %u outputs asked, the model has %u", outputs ? n_outputs : 0,
                   c->model->n_outputs);
        status = RKNN_ERR_PARAM_INVALID;
    }
    for (uint32_t k = 0; k < n_outputs && !status; k++)
        status = output_for(c, &outputs[k]);
    pthread_mutex_unlock(&c->lock);
    fake_log("call=outputs_get ctx=%llu n=%u want_float=%d is_prealloc=%d status=%d",
             (unsigned long long)context, n_outputs, outputs && n_outputs ? outputs[0].want_float : -1,
             outputs && n_outputs ? outputs[0].is_prealloc : -1, status);
    return status;
}

EXPORT int rknn_outputs_release(rknn_context context, uint32_t n_outputs, rknn_output outputs[])
{
    if (!fake_find(context, "rknn_outputs_release"))
        return RKNN_ERR_CTX_INVALID;
    for (uint32_t k = 0; outputs && k < n_outputs; k++)
        if (!outputs[k].is_prealloc) {
            free(outputs[k].buf);
            outputs[k].buf = NULL;
        }
    fake_log("call=outputs_release ctx=%llu n=%u", (unsigned long long)context, n_outputs);
    return RKNN_SUCC;
}

/* ── rknn_run ───────────────────────────────────────────────────────────── */
static int64_t now_us(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000 + t.tv_nsec / 1000;
}

static void *mem_data(const rknn_tensor_mem *mem) { return (char *)mem->virt_addr + mem->offset; }

static int gather_inputs(fake_ctx *c)
{
    for (uint32_t i = 0; i < c->model->n_inputs; i++) {
        const io_binding *b = &c->in_mem[i];
        if (b->mem) {
            int status = set_input(c, i, mem_data(b->mem), b->mem->size, b->attr.pass_through, b->attr.type,
                                   b->attr.fmt, "rknn_run (input mem)");
            if (status)
                return status;
        } else if (!c->input_set[i]) {
            fake_error("rknn_run: input %u (%s) was never set: call rknn_inputs_set or rknn_set_io_mem first",
                       i, c->model->inputs[i].attr.name);
            return RKNN_ERR_INPUT_INVALID;
        }
    }
    return RKNN_SUCC;
}

static void builtin_compute(fake_ctx *c, float **in, float **out)
{
    const fake_model *m = c->model;
    for (uint32_t i = 0; i < m->n_inputs; i++)
        for (size_t e = 0; e < m->inputs[i].attr.n_elems; e++)
            in[i][e] = fake_dequant(&m->inputs[i].attr, fake_get(m->inputs[i].attr.type, c->inputs[i], e));
    fake_compute(m, in, out);
    for (uint32_t j = 0; j < m->n_outputs; j++)
        for (size_t e = 0; e < m->outputs[j].attr.n_elems; e++)
            fake_put(m->outputs[j].attr.type, c->outputs[j], e, fake_quant(&m->outputs[j].attr, out[j][e]));
}

static int compute_with_floats(fake_ctx *c)
{
    float *in[FAKE_MAX_TENSORS] = {0}, *out[FAKE_MAX_TENSORS] = {0};
    size_t n = c->model->inputs[0].attr.n_elems;
    int status = RKNN_SUCC;
    for (uint32_t i = 0; i < c->model->n_inputs && !status; i++)
        status = (in[i] = malloc(n * sizeof(float))) ? RKNN_SUCC : RKNN_ERR_MALLOC_FAIL;
    for (uint32_t j = 0; j < c->model->n_outputs && !status; j++)
        status = (out[j] = malloc(n * sizeof(float))) ? RKNN_SUCC : RKNN_ERR_MALLOC_FAIL;
    if (!status)
        builtin_compute(c, in, out);
    for (uint32_t k = 0; k < FAKE_MAX_TENSORS; k++)
        free(in[k]), free(out[k]);
    return status;
}

static void op_tensors(fake_ctx *c, rknn_custom_op_tensor *ins, rknn_custom_op_tensor *outs)
{
    for (uint32_t i = 0; i < c->model->n_inputs; i++) {
        memset(&ins[i], 0, sizeof ins[i]);
        ins[i].attr = c->model->inputs[i].attr;
        ins[i].mem.virt_addr = c->inputs[i], ins[i].mem.fd = -1, ins[i].mem.size = ins[i].attr.size;
    }
    for (uint32_t j = 0; j < c->model->n_outputs; j++) {
        memset(&outs[j], 0, sizeof outs[j]);
        outs[j].attr = c->model->outputs[j].attr;
        outs[j].mem.virt_addr = c->outputs[j], outs[j].mem.fd = -1, outs[j].mem.size = outs[j].attr.size;
    }
}

/* The op's callback `fn` (init, prepare or compute) on the context's own tensors. */
static int call_op(fake_ctx *c, rknn_custom_op_fn fn)
{
    rknn_custom_op_tensor ins[FAKE_MAX_TENSORS], outs[FAKE_MAX_TENSORS];
    op_tensors(c, ins, outs);
    return fn(&c->op_ctx, ins, c->model->n_inputs, outs, c->model->n_outputs);
}

static int compute(fake_ctx *c)
{
    const char *needed = c->model->custom_op;
    int status;
    if (!needed[0] || c->model_op_skipped)
        return compute_with_floats(c);
    if (!c->model_op) {
        fake_error("rknn_run: the model uses the custom op \"%s\", which is not registered on this context: "
                   "call rknn_register_custom_ops after rknn_init",
                   needed);
        return RKNN_ERR_FAIL;
    }
    if (c->model_op->prepare && (status = call_op(c, c->model_op->prepare)) != 0) {
        fake_error("rknn_run: custom op \"%s\" prepare returned %d", needed, status);
        return RKNN_ERR_FAIL;
    }
    if ((status = call_op(c, c->model_op->compute)) != 0) {
        fake_error("rknn_run: custom op \"%s\" compute returned %d", needed, status);
        return RKNN_ERR_FAIL;
    }
    return RKNN_SUCC;
}

static void scatter_outputs(fake_ctx *c)
{
    for (uint32_t j = 0; j < c->model->n_outputs; j++)
        if (c->out_mem[j].mem)
            get_output(c, j, mem_data(c->out_mem[j].mem), c->out_mem[j].attr.type, c->out_mem[j].attr.fmt);
}

EXPORT int rknn_run(rknn_context context, rknn_run_extend *extend)
{
    fake_ctx *c = fake_find(context, "rknn_run");
    int64_t start = now_us();
    long run;
    int status;
    (void)extend;
    if (!c)
        return RKNN_ERR_CTX_INVALID;
    pthread_mutex_lock(&c->lock);
    status = gather_inputs(c);
    run = status ? 0 : __atomic_add_fetch(&c->model->runs, 1, __ATOMIC_SEQ_CST);
    fake_log("call=run ctx=%llu run=%ld mask=%d", (unsigned long long)context, run, c->core_mask);
    if (!status)
        status = fake_before_run(&c->model->faults, run);
    if (!status)
        status = compute(c);
    if (!status) {
        scatter_outputs(c);
        c->has_run = 1;
        c->last_run_us = now_us() - start;
    }
    pthread_mutex_unlock(&c->lock);
    if (status)
        fake_log("call=run_failed ctx=%llu run=%ld status=%d", (unsigned long long)context, run, status);
    return status;
}

/* ── tensor mems ────────────────────────────────────────────────────────── */
static rknn_tensor_mem *new_mem(fake_ctx *c, uint32_t size)
{
    rknn_tensor_mem *mem = calloc(1, sizeof *mem);
    mem_private *owned = calloc(1, sizeof *owned);
    if (!mem || !owned) {
        free(mem), free(owned);
        fake_error("rknn_create_mem: out of memory");
        return NULL;
    }
    mem->size = size;
    mem->fd = -1;
    mem->priv_data = owned;
    __atomic_add_fetch(&c->dma_bytes, size, __ATOMIC_SEQ_CST);
    return mem;
}

EXPORT rknn_tensor_mem *rknn_create_mem(rknn_context context, uint32_t size)
{
    fake_ctx *c = fake_find(context, "rknn_create_mem");
    rknn_tensor_mem *mem = c ? new_mem(c, size) : NULL;
    mem_private *owned = mem ? mem->priv_data : NULL;
    if (mem && !(owned->heap = mem->virt_addr = calloc(1, size ? size : 1))) {
        free(owned), free(mem);
        mem = NULL;
    }
    fake_log("call=create_mem ctx=%llu size=%u ok=%d", (unsigned long long)context, size, mem != NULL);
    return mem;
}

/* The data is at virt_addr + offset. Without virt_addr the fake maps the fd itself (a dma-buf on a
 * board; any mmap-able fd here, e.g. a /dev/shm file), from file offset 0 to offset + size. */
EXPORT rknn_tensor_mem *rknn_create_mem_from_fd(rknn_context context, int32_t fd, void *virt_addr, uint32_t size,
                                                int32_t offset)
{
    fake_ctx *c = fake_find(context, "rknn_create_mem_from_fd");
    rknn_tensor_mem *mem = c && offset >= 0 ? new_mem(c, size) : NULL;
    mem_private *owned = mem ? mem->priv_data : NULL;
    if (c && offset < 0)
        fake_error("rknn_create_mem_from_fd: negative offset %d", offset);
    if (mem && !virt_addr) {
        owned->map_length = (size_t)offset + size;
        owned->map_base = mmap(NULL, owned->map_length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (owned->map_base == MAP_FAILED) {
            fake_error("rknn_create_mem_from_fd: cannot map fd %d (%zu bytes)", fd, owned->map_length);
            free(owned), free(mem);
            mem = NULL;
        } else {
            virt_addr = owned->map_base;
        }
    }
    if (mem) {
        mem->virt_addr = virt_addr;
        mem->fd = fd;
        mem->offset = offset;
    }
    fake_log("call=create_mem_from_fd ctx=%llu fd=%d size=%u offset=%d mapped_by_fake=%d ok=%d",
             (unsigned long long)context, fd, size, offset, mem && virt_addr == owned->map_base, mem != NULL);
    return mem;
}

EXPORT int rknn_destroy_mem(rknn_context context, rknn_tensor_mem *mem)
{
    fake_ctx *c = fake_find(context, "rknn_destroy_mem");
    mem_private *owned;
    if (!c)
        return RKNN_ERR_CTX_INVALID;
    if (!mem) {
        fake_error("rknn_destroy_mem: mem is NULL");
        return RKNN_ERR_PARAM_INVALID;
    }
    owned = mem->priv_data;
    __atomic_sub_fetch(&c->dma_bytes, mem->size, __ATOMIC_SEQ_CST);
    pthread_mutex_lock(&c->lock);
    for (uint32_t k = 0; k < FAKE_MAX_TENSORS; k++) {
        if (c->in_mem[k].mem == mem)
            c->in_mem[k].mem = NULL;
        if (c->out_mem[k].mem == mem)
            c->out_mem[k].mem = NULL;
    }
    pthread_mutex_unlock(&c->lock);
    if (owned && owned->map_base)
        munmap(owned->map_base, owned->map_length);
    if (owned)
        free(owned->heap);
    free(owned);
    fake_log("call=destroy_mem ctx=%llu size=%u", (unsigned long long)context, mem->size);
    free(mem);
    return RKNN_SUCC;
}

static int find_tensor(const fake_tensor *tensors, uint32_t n, const char *name)
{
    for (uint32_t k = 0; k < n; k++)
        if (!strcmp(tensors[k].attr.name, name))
            return (int)k;
    return -1;
}

/* Binds mem to the input or output named attr->name; attr's type, fmt (and pass_through for an
 * input) say how the data in mem is laid out. */
static int bind(fake_ctx *c, rknn_tensor_mem *mem, const rknn_tensor_attr *attr)
{
    int i = find_tensor(c->model->inputs, c->model->n_inputs, attr->name);
    int j = i < 0 ? find_tensor(c->model->outputs, c->model->n_outputs, attr->name) : -1;
    const rknn_tensor_attr *model_attr;
    size_t needed;
    if (i < 0 && j < 0) {
        fake_error("rknn_set_io_mem: no input or output is named \"%s\" (pass an attr from rknn_query)",
                   attr->name);
        return RKNN_ERR_PARAM_INVALID;
    }
    model_attr = i >= 0 ? &c->model->inputs[i].attr : &c->model->outputs[j].attr;
    if (j >= 0 && attr->type != RKNN_TENSOR_FLOAT32 && attr->type != model_attr->type) {
        fake_error("rknn_set_io_mem: output %s: type %s, only FP32 or the model's %s", attr->name,
                   fake_type_name(attr->type), fake_type_name(model_attr->type));
        return RKNN_ERR_PARAM_INVALID;
    }
    needed = i >= 0 && attr->pass_through ? model_attr->size : model_attr->n_elems * fake_type_size(attr->type);
    if (!fake_type_supported(attr->type) || mem->size < needed) {
        fake_error("rknn_set_io_mem: %s: mem of %u bytes, %zu needed for %s", attr->name, mem->size, needed,
                   fake_type_name(attr->type));
        return RKNN_ERR_PARAM_INVALID;
    }
    if (i >= 0)
        c->in_mem[i] = (io_binding){mem, *attr};
    else
        c->out_mem[j] = (io_binding){mem, *attr};
    return RKNN_SUCC;
}

EXPORT int rknn_set_io_mem(rknn_context context, rknn_tensor_mem *mem, rknn_tensor_attr *attr)
{
    fake_ctx *c = fake_find(context, "rknn_set_io_mem");
    int status;
    if (!c)
        return RKNN_ERR_CTX_INVALID;
    if (!mem || !attr) {
        fake_error("rknn_set_io_mem: mem and attr must not be NULL");
        return RKNN_ERR_PARAM_INVALID;
    }
    pthread_mutex_lock(&c->lock);
    status = bind(c, mem, attr);
    pthread_mutex_unlock(&c->lock);
    fake_log("call=set_io_mem ctx=%llu tensor=%s type=%d fmt=%d size=%u status=%d",
             (unsigned long long)context, attr->name, (int)attr->type, (int)attr->fmt, mem->size, status);
    return status;
}

/* ── custom ops ─────────────────────────────────────────────────────────── */
static int check_ops(const rknn_custom_op *ops, uint32_t n_ops)
{
    if (!ops || n_ops == 0) {
        fake_error("rknn_register_custom_ops: no ops given");
        return RKNN_ERR_PARAM_INVALID;
    }
    for (uint32_t k = 0; k < n_ops; k++)
        if (!ops[k].op_type[0] || !memchr(ops[k].op_type, 0, sizeof ops[k].op_type) || !ops[k].compute) {
            fake_error("rknn_register_custom_ops: op %u needs an op_type and a compute callback", k);
            return RKNN_ERR_PARAM_INVALID;
        }
    return RKNN_SUCC;
}

/* Records the ops; the one the model needs is initialised now (init may say: use the built-in). */
static int register_ops(fake_ctx *c, const rknn_custom_op *ops, uint32_t n_ops)
{
    int status;
    if (c->ops) {
        /* As the real runtime: all of a model's custom ops go in one call (rknn-toolkit2 #538). */
        fake_error("rknn_register_custom_ops: this context has registered its custom ops already; "
                   "register all of them in one call");
        return RKNN_ERR_FAIL;
    }
    if ((status = check_ops(ops, n_ops)) != 0)
        return status;
    if (!(c->ops = malloc(n_ops * sizeof *ops)))
        return RKNN_ERR_MALLOC_FAIL;
    memcpy(c->ops, ops, n_ops * sizeof *ops);
    c->n_ops = n_ops;
    c->op_ctx.target = RKNN_TARGET_TYPE_CPU;
    c->op_ctx.internal_ctx = c->id;
    for (uint32_t k = 0; k < n_ops && !c->model_op; k++)
        if (c->model->custom_op[0] && !strcmp(c->ops[k].op_type, c->model->custom_op))
            c->model_op = &c->ops[k];
    if (c->model_op && c->model_op->init) {
        status = call_op(c, c->model_op->init);
        c->model_op_skipped = status == RKNN_WARNING_SKIP_CUSTOM_OP_COMPUTE;
        if (status && !c->model_op_skipped) {
            fake_error("rknn_register_custom_ops: custom op \"%s\" init returned %d", c->model_op->op_type,
                       status);
            c->model_op = NULL;
            return RKNN_ERR_FAIL;
        }
    }
    return RKNN_SUCC;
}

EXPORT int rknn_register_custom_ops(rknn_context context, rknn_custom_op *ops, uint32_t n_ops)
{
    fake_ctx *c = fake_find(context, "rknn_register_custom_ops");
    char names[1024] = "";
    size_t used = 0;
    int status;
    if (!c)
        return RKNN_ERR_CTX_INVALID;
    pthread_mutex_lock(&c->lock);
    status = register_ops(c, ops, n_ops);
    pthread_mutex_unlock(&c->lock);
    for (uint32_t k = 0; ops && k < n_ops && used < sizeof names - 1; k++)
        used += (size_t)snprintf(names + used, sizeof names - used, "%s%.*s", k ? "," : "", 255, ops[k].op_type);
    fake_log("call=register_custom_ops ctx=%llu n=%u ops=%s skipped=%d status=%d", (unsigned long long)context,
             n_ops, names[0] ? names : "-", c->model_op_skipped, status);
    return status;
}
