/*
 * librkcst_negcrash.so: the op "farm_negcrash", out = -in0 elementwise in float32,
 * except that an input whose first element is negative makes compute write
 * through a NULL pointer (a real SIGSEGV inside rknn_run). One bad input among
 * good ones: a farm must fail that task alone and serve the others.
 */
#include "plugin.h"

static int compute(rknn_custom_op_context *op_ctx, rknn_custom_op_tensor *inputs, uint32_t n_inputs,
                   rknn_custom_op_tensor *outputs, uint32_t n_outputs)
{
    const float *in;
    (void)op_ctx;
    if (n_inputs < 1 || n_outputs < 1)
        return -1;
    in = plugin_data(&inputs[0]);
    if (in[0] < 0.0f) {
        /* Both volatile: the compiler may neither drop the store nor turn it into a trap (SIGILL). */
        volatile int *volatile nowhere = NULL;
        *nowhere = 1;
    }
    for (uint32_t j = 0; j < n_outputs; j++) {
        float *out = plugin_data(&outputs[j]);
        for (size_t e = 0; e < inputs[0].attr.n_elems; e++)
            out[e] = -in[e];
    }
    return 0;
}

static rknn_custom_op op = {
    .version = 1,
    .target = RKNN_TARGET_TYPE_CPU,
    .op_type = "farm_negcrash",
    .compute = compute,
};

PLUGIN_EXPORT rknn_custom_op *get_rknn_custom_op(void)
{
    return &op;
}
