// SPDX-License-Identifier: GPL-2.0
/* dkmsd test fixture: provider module exporting a symbol. */
#include <linux/init.h>
#include <linux/module.h>
#include <linux/printk.h>

int dkmsd_alpha_answer(void)
{
	return 42;
}
EXPORT_SYMBOL_GPL(dkmsd_alpha_answer);

static int __init dkmsd_alpha_init(void)
{
	pr_info("dkmsd_alpha: loaded 2.1\n");
	return 0;
}

static void __exit dkmsd_alpha_exit(void)
{
	pr_info("dkmsd_alpha: unloaded 2.1\n");
}

module_init(dkmsd_alpha_init);
module_exit(dkmsd_alpha_exit);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("dkmsd test fixtures");
MODULE_DESCRIPTION("dkmsd test fixture: alpha (exports dkmsd_alpha_answer)");
MODULE_VERSION("2.1");
