/*
 * libcrash_at_load.so: a library whose constructor segfaults, so dlopen
 * itself kills the process. Not named librkcst_*: a default folder made of
 * the build folder must not pick it up by accident.
 */
#include "plugin.h"

__attribute__((constructor)) static void crash_now(void)
{
    volatile int *volatile nowhere = NULL;
    *nowhere = 1;
}

PLUGIN_EXPORT rknn_custom_op *get_rknn_custom_op(void)
{
    return NULL;
}
