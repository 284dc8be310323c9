/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* The access log of mirror storages (mirror-access.h): the IMAP and POP3
   sessions of a mirror storage user record, when they close a mailbox
   whose messages they looked at, what they read, changed and expunged in
   it. */

#include "lib.h"
#include "array.h"
#include "str.h"
#include "ioloop.h"
#include "net.h"
#include "str-sanitize.h"
#include "seq-range-array.h"
#include "imap-util.h"
#include "mail-user.h"
#include "mail-namespace.h"
#include "mail-storage-private.h"
#include "mail-storage-hooks.h"
#include "mirror-access.h"
#include "mirror-plugin.h"
#include "mirror-access-log.h"
#include "mirror-event.h"

#include <fcntl.h>
#include <unistd.h>

#define MIRROR_ACCESS_CONTEXT(obj) \
	MODULE_CONTEXT(obj, mirror_access_storage_module)
#define MIRROR_ACCESS_MAIL_CONTEXT(obj) \
	MODULE_CONTEXT_REQUIRE(obj, mirror_access_mail_module)

struct mirror_access_mailbox {
	union mailbox_module_context module_ctx;
	ARRAY_TYPE(seq_range) fetched, changed, expunged;
	/* the session looked at its messages (a STATUS or LIST doesn't) */
	bool used;
};

static MODULE_CONTEXT_DEFINE_INIT(mirror_access_storage_module,
				  &mail_storage_module_register);
static MODULE_CONTEXT_DEFINE_INIT(mirror_access_mail_module,
				  &mail_module_register);

static const char *mirror_access_uids(const ARRAY_TYPE(seq_range) *uids)
{
	string_t *str = t_str_new(64);

	if (array_is_created(uids))
		imap_write_seq_range(str, uids);
	/* a set too long for a line is cut at a whole range */
	if (str_len(str) > MIRROR_ACCESS_LINE_MAX / 5) {
		const char *p;

		str_truncate(str, MIRROR_ACCESS_LINE_MAX / 5);
		p = strrchr(str_c(str), ',');
		str_truncate(str, p == NULL ? 0 : (size_t)(p - str_c(str)));
		str_append(str, ",...");
	}
	return str_c(str);
}

static void mirror_access_write(struct mailbox *box)
{
	struct mirror_access_mailbox *abox = MIRROR_ACCESS_CONTEXT(box);
	struct mail_user *user = box->storage->user;
	struct mirror_access_record rec;
	const char *root, *path;
	string_t *line;
	int fd;

	if (!mailbox_list_get_root_path(mail_namespace_find_inbox(
			user->namespaces)->list, MAILBOX_LIST_PATH_TYPE_CONTROL,
			&root))
		return;
	i_zero(&rec);
	rec.time = ioloop_time;
	rec.session = user->session_id == NULL ? "" : user->session_id;
	rec.service = user->service;
	rec.remote_ip = user->conn.remote_ip == NULL ? "" :
		net_ip2addr(user->conn.remote_ip);
	/* a line stays short whatever the names (a user can name its own
	   mailboxes) */
	rec.user = str_sanitize(user->username, MIRROR_ACCESS_NAME_MAX);
	rec.mailbox = str_sanitize(box->vname, MIRROR_ACCESS_NAME_MAX);
	rec.fetched = mirror_access_uids(&abox->fetched);
	rec.changed = mirror_access_uids(&abox->changed);
	rec.expunged = mirror_access_uids(&abox->expunged);
	line = t_str_new(256);
	mirror_access_record_format(line, &rec);

	path = t_strconcat(root, "/"MIRROR_ACCESS_FILE_NAME, NULL);
	fd = open(path, O_WRONLY | O_APPEND | O_CREAT, 0600);
	if (fd == -1) {
		e_error(box->event, "mirror: open(%s) failed: %m", path);
		return;
	}
	/* one write() of the whole line: concurrent sessions' lines don't
	   interleave */
	if (write(fd, str_data(line), str_len(line)) != (ssize_t)str_len(line))
		e_error(box->event, "mirror: write(%s) failed: %m", path);
	i_close_fd(&fd);
}

static void mirror_access_close(struct mailbox *box)
{
	struct mirror_access_mailbox *abox = MIRROR_ACCESS_CONTEXT(box);

	if (abox->used) T_BEGIN {
		mirror_access_write(box);
	} T_END;
	abox->used = FALSE;
	array_clear(&abox->fetched);
	array_clear(&abox->changed);
	array_clear(&abox->expunged);
	abox->module_ctx.super.close(box);
}

static int mirror_access_istream_opened(struct mail *_mail,
					struct istream **input)
{
	struct mail_private *mail = (struct mail_private *)_mail;
	struct mirror_access_mailbox *abox = MIRROR_ACCESS_CONTEXT(_mail->box);
	union mail_module_context *amail = MIRROR_ACCESS_MAIL_CONTEXT(mail);

	seq_range_array_add(&abox->fetched, _mail->uid);
	return amail->super.istream_opened(_mail, input);
}

static void
mirror_access_update_flags(struct mail *_mail, enum modify_type modify_type,
			   enum mail_flags flags)
{
	struct mail_private *mail = (struct mail_private *)_mail;
	struct mirror_access_mailbox *abox = MIRROR_ACCESS_CONTEXT(_mail->box);
	union mail_module_context *amail = MIRROR_ACCESS_MAIL_CONTEXT(mail);

	seq_range_array_add(&abox->changed, _mail->uid);
	amail->super.update_flags(_mail, modify_type, flags);
}

static void
mirror_access_update_keywords(struct mail *_mail, enum modify_type modify_type,
			      struct mail_keywords *keywords)
{
	struct mail_private *mail = (struct mail_private *)_mail;
	struct mirror_access_mailbox *abox = MIRROR_ACCESS_CONTEXT(_mail->box);
	union mail_module_context *amail = MIRROR_ACCESS_MAIL_CONTEXT(mail);

	seq_range_array_add(&abox->changed, _mail->uid);
	amail->super.update_keywords(_mail, modify_type, keywords);
}

static void mirror_access_expunge(struct mail *_mail)
{
	struct mail_private *mail = (struct mail_private *)_mail;
	struct mirror_access_mailbox *abox = MIRROR_ACCESS_CONTEXT(_mail->box);
	union mail_module_context *amail = MIRROR_ACCESS_MAIL_CONTEXT(mail);

	seq_range_array_add(&abox->expunged, _mail->uid);
	amail->super.expunge(_mail);
}

static void mirror_access_mailbox_allocated(struct mailbox *box)
{
	struct mailbox_vfuncs *v = box->vlast;
	struct mirror_access_mailbox *abox;

	if (!mirror_user_access_logged(box->storage->user))
		return;
	abox = p_new(box->pool, struct mirror_access_mailbox, 1);
	abox->module_ctx.super = *v;
	box->vlast = &abox->module_ctx.super;
	v->close = mirror_access_close;
	p_array_init(&abox->fetched, box->pool, 8);
	p_array_init(&abox->changed, box->pool, 8);
	p_array_init(&abox->expunged, box->pool, 8);
	MODULE_CONTEXT_SET(box, mirror_access_storage_module, abox);
}

static void mirror_access_mail_allocated(struct mail *_mail)
{
	struct mail_private *mail = (struct mail_private *)_mail;
	struct mail_vfuncs *v = mail->vlast;
	struct mirror_access_mailbox *abox = MIRROR_ACCESS_CONTEXT(_mail->box);
	union mail_module_context *amail;

	if (abox == NULL)
		return;
	abox->used = TRUE;
	amail = p_new(mail->pool, union mail_module_context, 1);
	amail->super = *v;
	mail->vlast = &amail->super;
	v->istream_opened = mirror_access_istream_opened;
	v->update_flags = mirror_access_update_flags;
	v->update_keywords = mirror_access_update_keywords;
	v->expunge = mirror_access_expunge;
	MODULE_CONTEXT_SET_SELF(mail, mirror_access_mail_module, amail);
}

static struct mail_storage_hooks mirror_access_hooks = {
	.mailbox_allocated = mirror_access_mailbox_allocated,
	.mail_allocated = mirror_access_mail_allocated,
};

void mirror_access_hooks_add(struct module *module)
{
	mail_storage_hooks_add(module, &mirror_access_hooks);
}

void mirror_access_hooks_remove(void)
{
	mail_storage_hooks_remove(&mirror_access_hooks);
}
