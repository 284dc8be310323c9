#ifndef BAG_FLUSH_CLIENT_H
#define BAG_FLUSH_CLIENT_H

/* The bag-flush protocol: how doveadm, the ETRN processes and the backup
   scheduler ask the bag service's bag-flush listener to flush a domain
   (bag/bag-flush-request.c serves it). A line protocol on
   connection.h, tab-separated and tab-escaped, after both sides' VERSION
   line ("bag-flush" 1.0):

     FLUSH <domain> [host=<host[:port]>] [wait] [backup]

   Without "wait" nothing is answered. With it, one reply when the flush
   has ended:

     DONE <delivered> <deferred> <bounced> <broken> [<error>]
     BUSY                    another process is flushing the domain
     FAIL <error>            the flush couldn't start */

#define BAG_FLUSH_SOCKET "bag-flush"
#define BAG_FLUSH_SERVICE_NAME "bag-flush"
#define BAG_FLUSH_PROTOCOL_MAJOR 1
#define BAG_FLUSH_PROTOCOL_MINOR 0
/* the longest request or reply line */
#define BAG_FLUSH_LINE_MAX 1024

enum bag_flush_request_flags {
	/* a reply comes when the flush has ended */
	BAG_FLUSH_REQUEST_FLAG_WAIT = 0x01,
	/* the backup scheduler asks */
	BAG_FLUSH_REQUEST_FLAG_BACKUP = 0x02,
};

enum bag_flush_reply_status {
	BAG_FLUSH_REPLY_DONE = 0,
	BAG_FLUSH_REPLY_BUSY,
	/* FAIL, or no reply (the error says why) */
	BAG_FLUSH_REPLY_FAIL,
};

struct bag_flush_reply {
	enum bag_flush_reply_status status;
	unsigned int delivered, deferred, bounced, broken;
	/* FAIL: why; DONE: the flush's last error, or NULL */
	const char *error;
};

typedef void bag_flush_reply_callback_t(const struct bag_flush_reply *reply,
					void *context);

struct bag_flush_client;

/* Ask base_dir's bag-flush listener to flush domain (to host instead of
   its ETRN host, if not NULL), in the current ioloop. Without
   BAG_FLUSH_REQUEST_FLAG_WAIT the request is sent and the connection
   closed: NULL is returned, and -1 with error_r if it couldn't be sent.
   With it, callback gets the reply (or a FAIL when the connection ends
   without one) and the client is freed after it. */
int bag_flush_client_request(const char *base_dir, const char *domain,
			     const char *host,
			     enum bag_flush_request_flags flags,
			     bag_flush_reply_callback_t *callback,
			     void *context, struct bag_flush_client **client_r,
			     const char **error_r);
/* Forget a request whose reply is no longer wanted (no callback). */
void bag_flush_client_deinit(struct bag_flush_client **client);

/* The same, waiting for the reply in an ioloop of its own (doveadm).
   0 with reply_r (strings from the data stack), or -1 with error_r when
   the listener can't be reached. */
int bag_flush_client_run(const char *base_dir, const char *domain,
			 const char *host, enum bag_flush_request_flags flags,
			 struct bag_flush_reply *reply_r,
			 const char **error_r);

/* The reply line's words (for the listener, and tests). */
void bag_flush_reply_append(string_t *dest,
			    const struct bag_flush_reply *reply);
int bag_flush_reply_parse(const char *const *args,
			  struct bag_flush_reply *reply_r,
			  const char **error_r);

#endif
