// SPDX-License-Identifier: GPL-2.0
/* dkmsd test fixture: minimal module. */
#include <linux/init.h>
#include <linux/module.h>
#include <linux/printk.h>

static int __init dkmsd_hello_init(void)
{
	pr_info("dkmsd_hello: loaded 1.0\n");
	return 0;
}

static void __exit dkmsd_hello_exit(void)
{
	pr_info("dkmsd_hello: unloaded 1.0\n");
}

module_init(dkmsd_hello_init);
module_exit(dkmsd_hello_exit);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("dkmsd test fixtures");
MODULE_DESCRIPTION("dkmsd test fixture: hello");
MODULE_VERSION("1.0");
