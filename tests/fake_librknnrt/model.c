/*
 * model.c: the fake's model file format and its tensor math.
 *
 * A model file is text, one record a line (README.md has the grammar):
 *
 *   FKRN 1
 *   input  <name> <type> <fmt> <qnt> <zp> <scale> <n_dims> <dims...>
 *   output <name> <type> <fmt> <qnt> <zp> <scale> <source> <k> <n_dims> <dims...>
 *   custom_op <op type>          custom_string <text>
 *   fault <kind> <value> <after> [message]
 *
 * The computation is elementwise in each tensor's native layout, so a test
 * can predict it exactly in numpy (tests/fake_librknnrt/fake_model.py):
 * output j = (source < 0 ? in0 + in1 + ... : in[source]) * k, in float32,
 * on the inputs' dequantized values, then quantized to the output's type.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fake_internal.h"

/* ── types ──────────────────────────────────────────────────────────────── */
static const size_t TYPE_SIZES[] = {4, 2, 1, 1, 2, 2, 4, 4, 8, 1};
static const char *const TYPE_NAMES[] = {"FP32",  "FP16",   "INT8",   "UINT8", "INT16",
                                         "UINT16", "INT32", "UINT32", "INT64", "BOOL"};

int fake_type_supported(int type) { return type >= 0 && type <= RKNN_TENSOR_BOOL; }

size_t fake_type_size(int type) { return fake_type_supported(type) ? TYPE_SIZES[type] : 0; }

const char *fake_type_name(int type) { return fake_type_supported(type) ? TYPE_NAMES[type] : "UNSUPPORTED"; }

float fake_get(int type, const void *data, size_t i)
{
    switch (type) {
    case RKNN_TENSOR_FLOAT32: return ((const float *)data)[i];
    case RKNN_TENSOR_FLOAT16: return (float)((const _Float16 *)data)[i];
    case RKNN_TENSOR_INT8: return (float)((const int8_t *)data)[i];
    case RKNN_TENSOR_UINT8: return (float)((const uint8_t *)data)[i];
    case RKNN_TENSOR_INT16: return (float)((const int16_t *)data)[i];
    case RKNN_TENSOR_UINT16: return (float)((const uint16_t *)data)[i];
    case RKNN_TENSOR_INT32: return (float)((const int32_t *)data)[i];
    case RKNN_TENSOR_UINT32: return (float)((const uint32_t *)data)[i];
    case RKNN_TENSOR_INT64: return (float)((const int64_t *)data)[i];
    default: return ((const uint8_t *)data)[i] ? 1.0f : 0.0f; /* BOOL */
    }
}

/* Integers: rounded half to even (as numpy's rint), then clamped to the type's range. */
static double clamp_rint(float value, double lo, double hi)
{
    double r = rint((double)value);
    return r < lo ? lo : (r > hi ? hi : r);
}

void fake_put(int type, void *data, size_t i, float v)
{
    switch (type) {
    case RKNN_TENSOR_FLOAT32: ((float *)data)[i] = v; break;
    case RKNN_TENSOR_FLOAT16: ((_Float16 *)data)[i] = (_Float16)v; break;
    case RKNN_TENSOR_INT8: ((int8_t *)data)[i] = (int8_t)clamp_rint(v, INT8_MIN, INT8_MAX); break;
    case RKNN_TENSOR_UINT8: ((uint8_t *)data)[i] = (uint8_t)clamp_rint(v, 0, UINT8_MAX); break;
    case RKNN_TENSOR_INT16: ((int16_t *)data)[i] = (int16_t)clamp_rint(v, INT16_MIN, INT16_MAX); break;
    case RKNN_TENSOR_UINT16: ((uint16_t *)data)[i] = (uint16_t)clamp_rint(v, 0, UINT16_MAX); break;
    case RKNN_TENSOR_INT32: ((int32_t *)data)[i] = (int32_t)clamp_rint(v, INT32_MIN, INT32_MAX); break;
    case RKNN_TENSOR_UINT32: ((uint32_t *)data)[i] = (uint32_t)clamp_rint(v, 0, UINT32_MAX); break;
    case RKNN_TENSOR_INT64: ((int64_t *)data)[i] = (int64_t)clamp_rint(v, -9.2e18, 9.2e18); break;
    default: ((uint8_t *)data)[i] = v != 0.0f; break; /* BOOL */
    }
}

float fake_dequant(const rknn_tensor_attr *attr, float q)
{
    if (attr->qnt_type != RKNN_TENSOR_QNT_AFFINE_ASYMMETRIC)
        return q;
    return (q - (float)attr->zp) * attr->scale;
}

float fake_quant(const rknn_tensor_attr *attr, float value)
{
    if (attr->qnt_type != RKNN_TENSOR_QNT_AFFINE_ASYMMETRIC)
        return value;
    return rintf(value / attr->scale) + (float)attr->zp;
}

/* ── the computation ────────────────────────────────────────────────────── */
void fake_compute(const fake_model *model, float *const *inputs, float *const *outputs)
{
    size_t n = model->inputs[0].attr.n_elems;
    for (uint32_t j = 0; j < model->n_outputs; j++) {
        const fake_tensor *out = &model->outputs[j];
        for (size_t e = 0; e < n; e++) {
            float acc;
            if (out->source >= 0) {
                acc = inputs[out->source][e];
            } else {
                acc = inputs[0][e];
                for (uint32_t i = 1; i < model->n_inputs; i++)
                    acc += inputs[i][e];
            }
            outputs[j][e] = acc * out->k;
        }
    }
}

/* ── layouts ────────────────────────────────────────────────────────────── */
int fake_is_nchw_nhwc_pair(const rknn_tensor_attr *attr, int other_fmt)
{
    if (attr->n_dims != 4 || attr->fmt == (rknn_tensor_format)other_fmt)
        return 0;
    return (attr->fmt == RKNN_TENSOR_NCHW || attr->fmt == RKNN_TENSOR_NHWC) &&
           (other_fmt == RKNN_TENSOR_NCHW || other_fmt == RKNN_TENSOR_NHWC);
}

/* Copies between the native layout of `attr` and the other of NCHW/NHWC; from_fmt says which
 * side src is. Only for pairs accepted by fake_is_nchw_nhwc_pair. */
void fake_transpose(const rknn_tensor_attr *attr, int from_fmt, const void *src, void *dst, size_t esize)
{
    const uint32_t *d = attr->dims;
    int native_nhwc = attr->fmt == RKNN_TENSOR_NHWC;
    size_t n_ = d[0], c_ = native_nhwc ? d[3] : d[1], h_ = native_nhwc ? d[1] : d[2],
           w_ = native_nhwc ? d[2] : d[3];
    const char *s = src;
    char *t = dst;
    for (size_t n = 0; n < n_; n++)
        for (size_t c = 0; c < c_; c++)
            for (size_t h = 0; h < h_; h++)
                for (size_t w = 0; w < w_; w++) {
                    size_t nchw = ((n * c_ + c) * h_ + h) * w_ + w;
                    size_t nhwc = ((n * h_ + h) * w_ + w) * c_ + c;
                    size_t native = native_nhwc ? nhwc : nchw, other = native_nhwc ? nchw : nhwc;
                    if (from_fmt == (int)attr->fmt)
                        memcpy(t + other * esize, s + native * esize, esize);
                    else
                        memcpy(t + native * esize, s + other * esize, esize);
                }
}

/* The attribute as NATIVE_NHWC_*_ATTR reports it: 4-D NCHW tensors permuted to NHWC. */
void fake_nhwc_attr(const rknn_tensor_attr *native, rknn_tensor_attr *out)
{
    *out = *native;
    if (!fake_is_nchw_nhwc_pair(native, RKNN_TENSOR_NHWC))
        return;
    out->dims[1] = native->dims[2];
    out->dims[2] = native->dims[3];
    out->dims[3] = native->dims[1];
    out->fmt = RKNN_TENSOR_NHWC;
    out->w_stride = out->dims[2];
}

/* ── parsing ────────────────────────────────────────────────────────────── */
typedef struct {
    char *save;
    int line;
    char *why;
    size_t why_size;
} parser;

static int fail(parser *p, const char *what)
{
    snprintf(p->why, p->why_size, "fake model line %d: %s", p->line, what);
    return -1;
}

static char *word(parser *p) { return strtok_r(NULL, " \t\r", &p->save); }

static int integer(parser *p, long *value)
{
    char *w = word(p), *end;
    if (!w)
        return fail(p, "a number is missing");
    *value = strtol(w, &end, 10);
    return *end ? fail(p, "not an integer") : 0;
}

static int real(parser *p, float *value)
{
    char *w = word(p), *end;
    if (!w)
        return fail(p, "a number is missing");
    *value = strtof(w, &end);
    return *end ? fail(p, "not a number") : 0;
}

static char *rest_of_line(parser *p)
{
    char *rest = p->save ? p->save + strspn(p->save, " \t") : NULL;
    if (rest)
        rest[strcspn(rest, "\r")] = '\0';
    return rest ? rest : (char *)"";
}

static int tensor_attr(parser *p, rknn_tensor_attr *a, uint32_t index, int output, fake_tensor *t)
{
    long type, fmt, qnt, zp, source = -1, n_dims, dim;
    char *name = word(p);
    if (!name || strlen(name) >= RKNN_MAX_NAME_LEN)
        return fail(p, "a tensor needs a name shorter than 256 bytes");
    if (integer(p, &type) || integer(p, &fmt) || integer(p, &qnt) || integer(p, &zp) || real(p, &a->scale))
        return -1;
    if (output && (integer(p, &source) || real(p, &t->k)))
        return -1;
    if (integer(p, &n_dims))
        return -1;
    if (!fake_type_supported((int)type))
        return fail(p, "unsupported tensor type (FP32..BOOL, codes 0-9)");
    if (fmt < 0 || fmt == RKNN_TENSOR_NC1HWC2 || fmt >= RKNN_TENSOR_FORMAT_MAX)
        return fail(p, "fmt must be 0 (NCHW), 1 (NHWC) or 3 (UNDEFINED)");
    if (qnt != RKNN_TENSOR_QNT_NONE && qnt != RKNN_TENSOR_QNT_AFFINE_ASYMMETRIC)
        return fail(p, "qnt_type must be 0 (NONE) or 2 (AFFINE)");
    if (qnt && !(a->scale > 0.0f))
        return fail(p, "an AFFINE tensor needs a scale > 0");
    if (n_dims < 1 || n_dims > RKNN_MAX_DIMS)
        return fail(p, "n_dims must be 1..16");
    snprintf(a->name, sizeof a->name, "%s", name);
    a->index = index;
    a->n_dims = (uint32_t)n_dims;
    a->n_elems = 1;
    for (long i = 0; i < n_dims; i++) {
        if (integer(p, &dim))
            return -1;
        if (dim < 1 || dim > 1 << 24)
            return fail(p, "dims must be 1..16777216");
        a->dims[i] = (uint32_t)dim;
        a->n_elems *= (uint32_t)dim;
    }
    a->fmt = (rknn_tensor_format)fmt;
    a->type = (rknn_tensor_type)type;
    a->qnt_type = (rknn_tensor_qnt_type)qnt;
    a->zp = (int32_t)zp;
    a->size = a->n_elems * (uint32_t)fake_type_size(a->type);
    a->size_with_stride = a->size;
    a->w_stride = n_dims == 4 ? a->dims[a->fmt == RKNN_TENSOR_NHWC ? 2 : 3] : 0;
    t->source = (int)source;
    return 0;
}

static int fault(parser *p, fake_faults *f)
{
    char *kind = word(p);
    long value, after;
    if (!kind || integer(p, &value) || integer(p, &after))
        return kind ? -1 : fail(p, "fault <kind> <value> <after> [message]");
    if (!strcmp(kind, "init_fail")) {
        f->init_fail = (int)value;
        snprintf(f->init_message, sizeof f->init_message, "%s", rest_of_line(p));
    } else if (!strcmp(kind, "run_fail")) {
        f->run_fail = (int)value, f->run_fail_after = (int)after;
    } else if (!strcmp(kind, "segfault")) {
        f->segfault = (int)value, f->segfault_after = (int)after;
    } else if (!strcmp(kind, "hang")) {
        f->hang = (int)value, f->hang_after = (int)after;
    } else if (!strcmp(kind, "slow_ms")) {
        f->slow_ms = (int)value, f->slow_after = (int)after;
    } else if (!strcmp(kind, "leak_mib")) {
        f->leak_mib = (int)value, f->leak_after = (int)after;
    } else if (!strcmp(kind, "perf_run_us")) {
        f->perf_run_us = (int)value;
    } else {
        return fail(p, "unknown fault (init_fail, run_fail, segfault, hang, slow_ms, leak_mib, perf_run_us)");
    }
    return 0;
}

static int record(parser *p, char *key, fake_model *m)
{
    if (!strcmp(key, "input") || !strcmp(key, "output")) {
        int output = key[0] == 'o';
        uint32_t *n = output ? &m->n_outputs : &m->n_inputs;
        fake_tensor *t = output ? &m->outputs[*n] : &m->inputs[*n];
        if (*n >= FAKE_MAX_TENSORS)
            return fail(p, "more than 64 inputs or outputs");
        if (tensor_attr(p, &t->attr, *n, output, t))
            return -1;
        (*n)++;
        return 0;
    }
    if (!strcmp(key, "custom_op")) {
        char *op = word(p);
        if (!op || strlen(op) >= sizeof m->custom_op)
            return fail(p, "custom_op <op type> (shorter than 256 bytes)");
        snprintf(m->custom_op, sizeof m->custom_op, "%s", op);
        return 0;
    }
    if (!strcmp(key, "custom_string")) {
        snprintf(m->custom_string, sizeof m->custom_string, "%s", rest_of_line(p));
        p->save = NULL;
        return 0;
    }
    if (!strcmp(key, "fault"))
        return fault(p, &m->faults);
    return fail(p, "unknown record (input, output, custom_op, custom_string, fault, end)");
}

/* Every output's source names an input, and the built-in math needs equal element counts. */
static int check(parser *p, fake_model *m)
{
    if (!m->n_inputs || !m->n_outputs) {
        snprintf(p->why, p->why_size, "fake model: it needs at least one input and one output");
        return -1;
    }
    for (uint32_t j = 0; j < m->n_outputs; j++)
        if (m->outputs[j].source < -1 || m->outputs[j].source >= (int)m->n_inputs) {
            snprintf(p->why, p->why_size, "fake model: output %s: source %d is neither -1 (sum) nor an input (0..%u)",
                     m->outputs[j].attr.name, m->outputs[j].source, m->n_inputs - 1);
            return -1;
        }
    for (uint32_t i = 0; i < m->n_inputs + m->n_outputs; i++) {
        const fake_tensor *t = i < m->n_inputs ? &m->inputs[i] : &m->outputs[i - m->n_inputs];
        if (t->attr.n_elems != m->inputs[0].attr.n_elems) {
            snprintf(p->why, p->why_size, "fake model: %s has %u elements, %s %u: all must be equal", t->attr.name,
                     t->attr.n_elems, m->inputs[0].attr.name, m->inputs[0].attr.n_elems);
            return -1;
        }
    }
    return 0;
}

int fake_model_parse(const char *bytes, size_t size, fake_model *m, char *why, size_t why_size)
{
    parser p = {NULL, 1, why, why_size};
    char *text = malloc(size + 1), *line, *next;
    int status = 0, ended = 0;
    if (!text)
        return fail(&p, "out of memory");
    memcpy(text, bytes, size);
    text[size] = '\0';
    memset(m, 0, sizeof *m);
    m->model_bytes = (uint32_t)size;
    if (size < 7 || strncmp(text, "FKRN 1\n", 7) != 0 || strlen(text) != size) {
        free(text);
        return fail(&p, "not a fake model: it must start with \"FKRN 1\" (write it with fake_model.py)");
    }
    for (line = text + 7; line && !status && !ended; line = next) {
        char *key;
        next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        p.line++;
        p.save = NULL;
        key = strtok_r(line, " \t\r", &p.save);
        if (!key || key[0] == '#')
            continue;
        if (!strcmp(key, "end"))
            ended = 1;
        else
            status = record(&p, key, m);
    }
    free(text);
    return status ? status : check(&p, m);
}
