/*
 * u64map.h: a hash map from 64-bit keys to int32 values (open addressing,
 * linear probing, power-of-two capacity, at most half full). Used by the BPE
 * learner and encoder for code points and id pairs.
 *
 * UINT64_MAX is reserved (the empty-slot marker) and may not be a key.
 * A zeroed struct is an empty map.
 */
#ifndef TFM_CORE_U64MAP_H
#define TFM_CORE_U64MAP_H

#include <stddef.h>
#include <stdint.h>

#include "transformer.h"

typedef struct tfm_u64map {
    uint64_t *keys;
    int32_t *vals;
    size_t cap, n;
} tfm_u64map;

/* The value of key, or -1 when absent. */
int32_t tfm_u64map_get(const tfm_u64map *m, uint64_t key);
/* Inserts or replaces; TFM_ERR_NOMEM when the table cannot grow. */
tfm_status tfm_u64map_put(tfm_u64map *m, uint64_t key, int32_t val);
void tfm_u64map_free(tfm_u64map *m);

#endif
