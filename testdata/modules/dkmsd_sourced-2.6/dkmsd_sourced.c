// SPDX-License-Identifier: GPL-2.0
/* dkmsd test fixture: minimal module. */
#include <linux/init.h>
#include <linux/module.h>
#include <linux/printk.h>

static int __init dkmsd_sourced_init(void)
{
	pr_info("dkmsd_sourced: loaded 2.6\n");
	return 0;
}

static void __exit dkmsd_sourced_exit(void)
{
	pr_info("dkmsd_sourced: unloaded 2.6\n");
}

module_init(dkmsd_sourced_init);
module_exit(dkmsd_sourced_exit);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("dkmsd test fixtures");
MODULE_DESCRIPTION("dkmsd test fixture: version from a helper");
MODULE_VERSION("2.6");
