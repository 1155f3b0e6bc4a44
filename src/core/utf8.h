/*
 * utf8.h: decoding and encoding UTF-8, strictly (RFC 3629).
 *
 * Overlong forms, surrogates (U+D800..U+DFFF), code points above U+10FFFF and
 * truncated sequences are invalid. Decoding never reads past `end`.
 */
#ifndef TFM_CORE_UTF8_H
#define TFM_CORE_UTF8_H

#include <stddef.h>
#include <stdint.h>

/* Decodes one code point from [s, end). Returns its length in bytes (1..4) and
 * stores the code point in *cp; returns 0 for an invalid or truncated sequence
 * (then *cp is undefined). s < end is required. */
int tfm_utf8_decode(const char *s, const char *end, uint32_t *cp);

/* Encodes cp (<= 0x10FFFF, not a surrogate) into out[0..3]; returns the length. */
int tfm_utf8_encode(uint32_t cp, char out[4]);

/* Checks that [s, s+len) is valid UTF-8. Returns 1 if so; otherwise 0 and, if
 * bad_offset is not NULL, the byte offset of the first invalid sequence. */
int tfm_utf8_valid(const char *s, size_t len, size_t *bad_offset);

#endif
