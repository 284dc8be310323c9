/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

#include "lib.h"
#include "fuzz-common.h"

#include <fcntl.h>
#include <unistd.h>

int LLVMFuzzerInitialize(int *argc ATTR_UNUSED, char ***argv ATTR_UNUSED)
{
	int fd;

	/* A closed stdin, stdout or stderr would be the next file opened,
	   and Dovecot asserts it never closes fd 0. Dovecot's services get
	   these from the master. */
	do {
		fd = open("/dev/null", O_RDWR);
		if (fd == -1)
			i_fatal("open(/dev/null) failed: %m");
	} while (fd <= STDERR_FILENO);
	if (close(fd) < 0)
		i_fatal("close(/dev/null) failed: %m");

	lib_init();
	return 0;
}

void fuzz_assert_loggable(const char *str)
{
	const unsigned char *p;

	for (p = (const unsigned char *)str; *p != '\0'; p++) {
		if (*p < 0x20)
			i_panic("control character 0x%02x in: %s", *p, str);
	}
}

const void *fuzz_memmem(const void *haystack, size_t haystack_len,
			const void *needle, size_t needle_len)
{
	const unsigned char *p = haystack, *end = p + haystack_len;

	i_assert(needle_len > 0);
	for (; (size_t)(end - p) >= needle_len; p++) {
		p = memchr(p, *(const unsigned char *)needle,
			   end - p - needle_len + 1);
		if (p == NULL)
			return NULL;
		if (memcmp(p, needle, needle_len) == 0)
			return p;
	}
	return NULL;
}

bool fuzz_str_ends_with(const char *str, const char *suffix)
{
	size_t len = strlen(str), suffix_len = strlen(suffix);

	return len >= suffix_len &&
		strcmp(str + len - suffix_len, suffix) == 0;
}
