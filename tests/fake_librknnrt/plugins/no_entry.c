/* libno_entry.so: a shared library that loads fine but exports no get_rknn_custom_op. */
#include "plugin.h"

PLUGIN_EXPORT int not_a_plugin(void)
{
    return 42;
}
