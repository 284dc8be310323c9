#ifndef FUZZ_COMMON_H
#define FUZZ_COMMON_H

/* What every fuzz target shares. fuzz-common.c defines libFuzzer's
   LLVMFuzzerInitialize(), which initializes Dovecot's lib once; each
   target defines LLVMFuzzerTestOneInput() and runs each input in a data
   stack frame of its own, with its own pool.

   Dovecot's FUZZ_BEGIN_DATA() (fuzzer.h) isn't used: in 2.3.19 its
   fuzzer_deinit() closes fd 0 after every input (fuzzer_init() leaves
   fd_pump 0), which then closes whatever file the next input opened. */

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size);

/* The kind of input selected by the first byte: '0' is 0, '1' is 1 and so
   on; any other byte picks one by its value. */
static inline unsigned int
fuzz_select(unsigned char selector, unsigned int count)
{
	return (unsigned char)(selector - '0') % count;
}

/* Assert that str is safe to log as one line: no byte below 0x20 (what
   str_sanitize() leaves: UTF-8 and DEL may stay). */
void fuzz_assert_loggable(const char *str);

/* memmem() and a suffix test, which glibc and Dovecot 2.3 give C99 code
   only with _GNU_SOURCE and not at all */
const void *fuzz_memmem(const void *haystack, size_t haystack_len,
			const void *needle, size_t needle_len);
bool fuzz_str_ends_with(const char *str, const char *suffix);

#endif
