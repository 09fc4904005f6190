/* ip_text.h: an IPv4 or IPv6 address as text, for every source of the core that reports one
 * (am_ip_text in core.h). */
#ifndef AM_IP_TEXT_H
#define AM_IP_TEXT_H

#include "core.h"

/* INET6_ADDRSTRLEN: "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255" and its NUL. */
enum { IP_TEXT_MAX = 46 };

#endif
