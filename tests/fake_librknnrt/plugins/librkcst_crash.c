/*
 * librkcst_crash.so: the op "farm_crash", whose compute writes through a NULL
 * pointer: a real SIGSEGV inside rknn_run, as users report of custom ops
 * (rknn-toolkit2 #20, #296). Loading and registering it is harmless.
 */
#include "plugin.h"

static int compute(rknn_custom_op_context *op_ctx, rknn_custom_op_tensor *inputs, uint32_t n_inputs,
                   rknn_custom_op_tensor *outputs, uint32_t n_outputs)
{
    /* Both volatile: the compiler may neither drop the store nor turn it into a trap (SIGILL). */
    volatile int *volatile nowhere = NULL;
    (void)op_ctx, (void)inputs, (void)n_inputs, (void)outputs, (void)n_outputs;
    *nowhere = 1;
    return 0;
}

static rknn_custom_op op = {
    .version = 1,
    .target = RKNN_TARGET_TYPE_CPU,
    .op_type = "farm_crash",
    .compute = compute,
};

PLUGIN_EXPORT rknn_custom_op *get_rknn_custom_op(void)
{
    return &op;
}
