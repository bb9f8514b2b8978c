/*
 * librkcst_scale.so: the op "farm_scale", out = in0 * 3 + 1 for every output,
 * elementwise in float32. Exactly checkable: a model of the fake that names
 * `custom_op farm_scale` gets these outputs instead of the built-in math.
 * init refuses anything but float32 tensors of equal size (returns -1), so a
 * test can make a registration fail for a real reason.
 */
#include "plugin.h"

static int check(rknn_custom_op_context *op_ctx, rknn_custom_op_tensor *inputs, uint32_t n_inputs,
                 rknn_custom_op_tensor *outputs, uint32_t n_outputs)
{
    (void)op_ctx;
    if (n_inputs < 1 || n_outputs < 1 || inputs[0].attr.type != RKNN_TENSOR_FLOAT32)
        return -1;
    for (uint32_t j = 0; j < n_outputs; j++)
        if (outputs[j].attr.type != RKNN_TENSOR_FLOAT32 || outputs[j].attr.n_elems != inputs[0].attr.n_elems)
            return -1;
    return 0;
}

static int compute(rknn_custom_op_context *op_ctx, rknn_custom_op_tensor *inputs, uint32_t n_inputs,
                   rknn_custom_op_tensor *outputs, uint32_t n_outputs)
{
    const float *in;
    if (check(op_ctx, inputs, n_inputs, outputs, n_outputs))
        return -1;
    in = plugin_data(&inputs[0]);
    for (uint32_t j = 0; j < n_outputs; j++) {
        float *out = plugin_data(&outputs[j]);
        for (size_t e = 0; e < inputs[0].attr.n_elems; e++)
            out[e] = in[e] * 3.0f + 1.0f;
    }
    return 0;
}

static rknn_custom_op op = {
    .version = 1,
    .target = RKNN_TARGET_TYPE_CPU,
    .op_type = "farm_scale",
    .init = check,
    .compute = compute,
};

PLUGIN_EXPORT rknn_custom_op *get_rknn_custom_op(void)
{
    return &op;
}
