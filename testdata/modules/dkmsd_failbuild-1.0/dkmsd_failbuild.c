// SPDX-License-Identifier: GPL-2.0
/* dkmsd test fixture: never compiles, on purpose. */
#include <linux/init.h>
#include <linux/module.h>
#include <linux/printk.h>

#error "dkmsd_failbuild: deliberate build failure"

static int __init dkmsd_failbuild_init(void)
{
	pr_info("dkmsd_failbuild: loaded 1.0\n");
	return 0;
}

static void __exit dkmsd_failbuild_exit(void)
{
	pr_info("dkmsd_failbuild: unloaded 1.0\n");
}

module_init(dkmsd_failbuild_init);
module_exit(dkmsd_failbuild_exit);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("dkmsd test fixtures");
MODULE_DESCRIPTION("dkmsd test fixture: deliberate build failure");
MODULE_VERSION("1.0");
