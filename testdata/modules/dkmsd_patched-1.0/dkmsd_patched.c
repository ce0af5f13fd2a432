// SPDX-License-Identifier: GPL-2.0
/* dkmsd test fixture: only builds once patches/fix.patch is applied. */
#include <linux/init.h>
#include <linux/module.h>
#include <linux/printk.h>

/* fix.patch replaces this block. */
#error "dkmsd_patched: patches/fix.patch was not applied"
#define DKMSD_PATCHED_STATE "unpatched"

static int __init dkmsd_patched_init(void)
{
	pr_info("dkmsd_patched: loaded 1.0 (" DKMSD_PATCHED_STATE ")\n");
	return 0;
}

static void __exit dkmsd_patched_exit(void)
{
	pr_info("dkmsd_patched: unloaded 1.0\n");
}

module_init(dkmsd_patched_init);
module_exit(dkmsd_patched_exit);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("dkmsd test fixtures");
MODULE_DESCRIPTION("dkmsd test fixture: needs fix.patch");
MODULE_VERSION("1.0");
