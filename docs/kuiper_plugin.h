/*
 * Kuiper plugin ABI v1: what a native plugin exports so that kuiper-node can
 * load and identify it. See docs/plugin-abi.md.
 *
 * A plugin named `random` exports, under the name with its first letter upper
 * cased, a function returning a pointer to a static descriptor:
 *
 *     static const KuiperPluginV1 descriptor = {
 *         KUIPER_PLUGIN_ABI_VERSION, KUIPER_PLUGIN_SOURCE, "random", "1.0.0"
 *     };
 *     KUIPER_PLUGIN_EXPORT const KuiperPluginV1 *Random(void) { return &descriptor; }
 */
#ifndef KUIPER_PLUGIN_H
#define KUIPER_PLUGIN_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The value of `abi_version` for this layout. */
#define KUIPER_PLUGIN_ABI_VERSION 1u

/* Values of `kind`: the directory (plugin type) the plugin is installed in. */
#define KUIPER_PLUGIN_SOURCE 0u   /* plugins/sources   */
#define KUIPER_PLUGIN_SINK 1u     /* plugins/sinks     */
#define KUIPER_PLUGIN_FUNCTION 2u /* plugins/functions */

/* Makes the entry point visible even when building with -fvisibility=hidden. */
#if defined(__GNUC__) || defined(__clang__)
#define KUIPER_PLUGIN_EXPORT __attribute__((visibility("default")))
#else
#define KUIPER_PLUGIN_EXPORT
#endif

typedef struct KuiperPluginV1 {
    uint32_t abi_version; /* KUIPER_PLUGIN_ABI_VERSION (1) */
    uint32_t kind;        /* KUIPER_PLUGIN_SOURCE, _SINK or _FUNCTION */
    const char *name;     /* NUL-terminated plugin name, e.g. "random" */
    const char *version;  /* NUL-terminated version, e.g. "1.0.0", or "" */
} KuiperPluginV1;

/* The entry point's type. The descriptor and its strings must stay valid
 * while the library is loaded (use static storage). */
typedef const KuiperPluginV1 *(*KuiperPluginEntryV1)(void);

#ifdef __cplusplus
}
#endif

#endif /* KUIPER_PLUGIN_H */
