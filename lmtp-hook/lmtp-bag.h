#ifndef LMTP_BAG_H
#define LMTP_BAG_H

struct client;
struct event;
struct mail_storage_service_ctx;
struct mirror_registry;

/* Take over recipients in bagged domains on this LMTP connection.
   registry must outlive the client (the mirror part owns it). */
void lmtp_bag_client_created(struct client *client,
			     struct mail_storage_service_ctx *storage_service,
			     struct mirror_registry *registry,
			     struct event *event_parent);

#endif
