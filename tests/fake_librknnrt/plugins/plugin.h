/*
 * plugin.h: what the test plugins share. A plugin exports
 * `rknn_custom_op *get_rknn_custom_op(void)` (one op per library, Rockchip's
 * convention); the library is built with -fvisibility=hidden, so the entry
 * point is marked PLUGIN_EXPORT.
 */
#ifndef FAKE_PLUGIN_H
#define FAKE_PLUGIN_H

#include <stddef.h>

#include "../rknn_api_fake.h"

#define PLUGIN_EXPORT __attribute__((visibility("default")))

/* A tensor's data: at mem.virt_addr + mem.offset, as the custom-op API says. */
static inline void *plugin_data(const rknn_custom_op_tensor *t)
{
    return (char *)t->mem.virt_addr + t->mem.offset;
}

#endif
