// SPDX-License-Identifier: GPL-2.0
/* dkmsd test fixture: minimal module. */
#include <linux/init.h>
#include <linux/module.h>
#include <linux/printk.h>

static int __init dkmsd_cleaned_init(void)
{
	pr_info("dkmsd_cleaned: loaded 1.0\n");
	return 0;
}

static void __exit dkmsd_cleaned_exit(void)
{
	pr_info("dkmsd_cleaned: unloaded 1.0\n");
}

module_init(dkmsd_cleaned_init);
module_exit(dkmsd_cleaned_exit);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("dkmsd test fixtures");
MODULE_DESCRIPTION("dkmsd test fixture: built by its own Makefile");
MODULE_VERSION("1.0");
