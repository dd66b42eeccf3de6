/*
 * An example Kuiper plugin in C (ABI v1, docs/plugin-abi.md), compiled by the
 * tests with `cc -shared -fPIC -I docs`. By default it is the sink `cprint`;
 * the tests build variants with -D:
 *
 *   PLUGIN_SYMBOL   exported entry point        (default Cprint)
 *   PLUGIN_NAME     descriptor name             (default "cprint")
 *   PLUGIN_KIND     descriptor kind             (default KUIPER_PLUGIN_SINK)
 *   PLUGIN_VERSION  descriptor version          (default "1.0.0")
 *   PLUGIN_ABI      descriptor abi_version      (default KUIPER_PLUGIN_ABI_VERSION)
 *   PLUGIN_DEFECT   0 none (default), 1 an initialiser that calls abort(),
 *                   2 a descriptor whose name is a wild pointer,
 *                   3 an initialiser that calls abort() except in a process
 *                     whose arguments include "probe" (a library that passes
 *                     kuiper-node's child-process probe, then crashes the
 *                     node itself, as one clashing with another library does)
 */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kuiper_plugin.h"

#ifndef PLUGIN_SYMBOL
#define PLUGIN_SYMBOL Cprint
#endif
#ifndef PLUGIN_NAME
#define PLUGIN_NAME "cprint"
#endif
#ifndef PLUGIN_KIND
#define PLUGIN_KIND KUIPER_PLUGIN_SINK
#endif
#ifndef PLUGIN_VERSION
#define PLUGIN_VERSION "1.0.0"
#endif
#ifndef PLUGIN_ABI
#define PLUGIN_ABI KUIPER_PLUGIN_ABI_VERSION
#endif

#ifndef PLUGIN_DEFECT
#define PLUGIN_DEFECT 0
#endif

#if PLUGIN_DEFECT == 1
/* Runs when the library is loaded, before anything of it is called. */
__attribute__((constructor)) static void crash_on_load(void) { abort(); }
#endif

#if PLUGIN_DEFECT == 3
/* Aborts unless one of the process's arguments is "probe". */
__attribute__((constructor)) static void crash_unless_probed(void) {
    char args[4096];
    FILE *f = fopen("/proc/self/cmdline", "rb");
    size_t n = f ? fread(args, 1, sizeof args - 1, f) : 0;
    if (f) {
        fclose(f);
    }
    args[n] = '\0';
    for (size_t i = 0; i < n; i += strlen(args + i) + 1) {
        if (strcmp(args + i, "probe") == 0) {
            return;
        }
    }
    abort();
}
#endif

static const KuiperPluginV1 descriptor = {
    PLUGIN_ABI,
    PLUGIN_KIND,
#if PLUGIN_DEFECT == 2
    (const char *)(size_t)16,
#else
    PLUGIN_NAME,
#endif
    PLUGIN_VERSION,
};

/* A sink's work: here, the number of bytes it would print. */
KUIPER_PLUGIN_EXPORT size_t kuiper_c_plugin_collect(const char *data) {
    size_t n = 0;
    while (data != NULL && data[n] != '\0') {
        n++;
    }
    return n;
}

KUIPER_PLUGIN_EXPORT const KuiperPluginV1 *PLUGIN_SYMBOL(void) {
    return &descriptor;
}
