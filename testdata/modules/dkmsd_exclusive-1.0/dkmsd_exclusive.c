// SPDX-License-Identifier: GPL-2.0
/* dkmsd test fixture: valid module restricted by BUILD_EXCLUSIVE_ARCH. */
#include <linux/init.h>
#include <linux/module.h>
#include <linux/printk.h>

static int __init dkmsd_exclusive_init(void)
{
	pr_info("dkmsd_exclusive: loaded 1.0\n");
	return 0;
}

static void __exit dkmsd_exclusive_exit(void)
{
	pr_info("dkmsd_exclusive: unloaded 1.0\n");
}

module_init(dkmsd_exclusive_init);
module_exit(dkmsd_exclusive_exit);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("dkmsd test fixtures");
MODULE_DESCRIPTION("dkmsd test fixture: BUILD_EXCLUSIVE_ARCH=aarch64");
MODULE_VERSION("1.0");
