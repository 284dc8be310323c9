/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* Check what fts-xapian found against the messages (mirror-search.h). */

#include "lib.h"
#include "module-dir.h"
#include "mail-user.h"
#include "mail-search.h"
#include "mail-storage-private.h"
#include "mail-storage-hooks.h"
#include "mirror-search.h"

#define MIRROR_SEARCH_CONTEXT_REQUIRE(obj) \
	MODULE_CONTEXT_REQUIRE(obj, mirror_search_storage_module)

static MODULE_CONTEXT_DEFINE_INIT(mirror_search_storage_module,
				  &mail_storage_module_register);

/* The fts plugin marks the keys its backend matched for the current
   message as always matching (match_always, from its per-message
   results). Make those of the kinds fts-xapian may over-match unknown
   again, so that the search checks them on the message itself. Only a
   match is doubted: what the index didn't find stays a non-match. */
static void mirror_search_doubt_matches(struct mail_search_arg *args)
{
	for (; args != NULL; args = args->next) {
		switch (args->type) {
		case SEARCH_OR:
		case SEARCH_SUB:
			mirror_search_doubt_matches(args->value.subargs);
			break;
		case SEARCH_HEADER:
		case SEARCH_HEADER_ADDRESS:
		case SEARCH_HEADER_COMPRESS_LWSP:
		case SEARCH_BODY:
		case SEARCH_TEXT:
			if (args->match_always && !args->nonmatch_always) {
				args->match_always = FALSE;
				args->result = -1;
			}
			break;
		default:
			break;
		}
	}
}

static int
mirror_search_next_match_mail(struct mail_search_context *ctx,
			      struct mail *mail)
{
	union mailbox_module_context *mbox =
		MIRROR_SEARCH_CONTEXT_REQUIRE(ctx->transaction->box);

	mirror_search_doubt_matches(ctx->args->args);
	return mbox->super.search_next_match_mail(ctx, mail);
}

static void mirror_search_mailbox_allocated(struct mailbox *box)
{
	struct mailbox_vfuncs *v = box->vlast;
	union mailbox_module_context *mbox;
	const char *backend;

	backend = mail_user_plugin_getenv(box->storage->user, "fts");
	if (backend == NULL || strcmp(backend, "xapian") != 0)
		return;

	mbox = p_new(box->pool, union mailbox_module_context, 1);
	mbox->super = *v;
	box->vlast = &mbox->super;
	v->search_next_match_mail = mirror_search_next_match_mail;
	MODULE_CONTEXT_SET_SELF(box, mirror_search_storage_module, mbox);
}

/* A hooks struct of its own: one hook call adds at most one layer */
static struct mail_storage_hooks mirror_search_mail_storage_hooks = {
	.mailbox_allocated = mirror_search_mailbox_allocated,
};

void mirror_search_hooks_add(struct module *module)
{
	mail_storage_hooks_add(module, &mirror_search_mail_storage_hooks);
}

void mirror_search_hooks_remove(void)
{
	mail_storage_hooks_remove(&mirror_search_mail_storage_hooks);
}
