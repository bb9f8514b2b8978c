/* libnull_op.so: get_rknn_custom_op returns NULL (a plugin with nothing to offer). */
#include "plugin.h"

PLUGIN_EXPORT rknn_custom_op *get_rknn_custom_op(void)
{
    return NULL;
}
