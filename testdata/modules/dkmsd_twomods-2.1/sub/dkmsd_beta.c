// SPDX-License-Identifier: GPL-2.0
/* dkmsd test fixture: consumer module depending on dkmsd_alpha. */
#include <linux/init.h>
#include <linux/module.h>
#include <linux/printk.h>

extern int dkmsd_alpha_answer(void);

static int __init dkmsd_beta_init(void)
{
	pr_info("dkmsd_beta: loaded 2.1 (alpha says %d)\n", dkmsd_alpha_answer());
	return 0;
}

static void __exit dkmsd_beta_exit(void)
{
	pr_info("dkmsd_beta: unloaded 2.1\n");
}

module_init(dkmsd_beta_init);
module_exit(dkmsd_beta_exit);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("dkmsd test fixtures");
MODULE_DESCRIPTION("dkmsd test fixture: beta (uses dkmsd_alpha_answer)");
MODULE_VERSION("2.1");
