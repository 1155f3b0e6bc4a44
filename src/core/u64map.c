/* u64map.c: see u64map.h. */
#include "core/u64map.h"

#include <stdlib.h>
#include <string.h>

#include "core/rng.h"
#include "core/status.h"

#define MAP_EMPTY UINT64_MAX

int32_t tfm_u64map_get(const tfm_u64map *m, uint64_t key) {
    if (!m->cap) return -1;
    size_t mask = m->cap - 1, i = (size_t)tfm_mix64(key) & mask;
    while (m->keys[i] != MAP_EMPTY) {
        if (m->keys[i] == key) return m->vals[i];
        i = (i + 1) & mask;
    }
    return -1;
}

tfm_status tfm_u64map_put(tfm_u64map *m, uint64_t key, int32_t val) {
    if ((m->n + 1) * 2 > m->cap) {
        size_t cap = m->cap ? m->cap * 2 : 64;
        uint64_t *keys = malloc(cap * sizeof *keys);
        int32_t *vals = malloc(cap * sizeof *vals);
        if (!keys || !vals) {
            free(keys);
            free(vals);
            return tfm_error(TFM_ERR_NOMEM, "out of memory growing a hash table to %zu entries", cap);
        }
        memset(keys, 0xFF, cap * sizeof *keys);
        for (size_t j = 0; j < m->cap; j++) {
            if (m->keys[j] == MAP_EMPTY) continue;
            size_t i = (size_t)tfm_mix64(m->keys[j]) & (cap - 1);
            while (keys[i] != MAP_EMPTY) i = (i + 1) & (cap - 1);
            keys[i] = m->keys[j];
            vals[i] = m->vals[j];
        }
        free(m->keys);
        free(m->vals);
        m->keys = keys;
        m->vals = vals;
        m->cap = cap;
    }
    size_t mask = m->cap - 1, i = (size_t)tfm_mix64(key) & mask;
    while (m->keys[i] != MAP_EMPTY && m->keys[i] != key) i = (i + 1) & mask;
    if (m->keys[i] == MAP_EMPTY) m->n++;
    m->keys[i] = key;
    m->vals[i] = val;
    return TFM_OK;
}

void tfm_u64map_free(tfm_u64map *m) {
    free(m->keys);
    free(m->vals);
    memset(m, 0, sizeof *m);
}
