/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* expire_mirror: tracks what is due for expiry in mirror storages and runs
   the nightly scan. This first version only loads; the expiry issue fills
   it in. */

#include "lib.h"
#include "module-dir.h"

const char *expire_mirror_plugin_version = DOVECOT_ABI_VERSION;

void expire_mirror_plugin_init(struct module *module);
void expire_mirror_plugin_deinit(void);

void expire_mirror_plugin_init(struct module *module ATTR_UNUSED)
{
}

void expire_mirror_plugin_deinit(void)
{
}
