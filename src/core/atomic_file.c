/* atomic_file.c: see atomic_file.h. */
#include "core/atomic_file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/status.h"

tfm_status tfm_atomic_open(tfm_atomic_file *af, const char *path) {
    memset(af, 0, sizeof *af);
    size_t n = strlen(path) + 32;
    af->path = strdup(path);
    af->tmp = malloc(n);
    if (!af->path || !af->tmp) {
        tfm_atomic_abort(af);
        return tfm_error(TFM_ERR_NOMEM, "%s: out of memory", path);
    }
    snprintf(af->tmp, n, "%s.tmp.%ld", path, (long)getpid());
    af->f = fopen(af->tmp, "wb");
    if (!af->f) {
        tfm_status st = tfm_error(TFM_ERR_IO, "%s: cannot create %s: %s", path, af->tmp, strerror(errno));
        tfm_atomic_abort(af);
        return st;
    }
    return TFM_OK;
}

/* fsyncs the directory holding path so that the rename is durable; best
 * effort (some file systems refuse fsync on a directory). */
static void sync_parent_dir(const char *path) {
    const char *slash = strrchr(path, '/');
    char dir[4096];
    if (!slash) {
        snprintf(dir, sizeof dir, ".");
    } else if (slash == path) {
        snprintf(dir, sizeof dir, "/");
    } else {
        size_t n = (size_t)(slash - path);
        if (n >= sizeof dir) return;
        memcpy(dir, path, n);
        dir[n] = '\0';
    }
    int fd = open(dir, O_RDONLY);
    if (fd < 0) return;
    (void)fsync(fd);
    close(fd);
}

tfm_status tfm_atomic_commit(tfm_atomic_file *af) {
    int ok = !ferror(af->f) && fflush(af->f) == 0 && fsync(fileno(af->f)) == 0;
    int err = errno;
    if (fclose(af->f) != 0 && ok) {
        ok = 0;
        err = errno;
    }
    af->f = NULL;
    tfm_status st = TFM_OK;
    if (!ok) st = tfm_error(TFM_ERR_IO, "%s: writing %s failed: %s", af->path, af->tmp, strerror(err));
    else if (rename(af->tmp, af->path) != 0)
        st = tfm_error(TFM_ERR_IO, "%s: cannot rename %s into place: %s", af->path, af->tmp, strerror(errno));
    if (st == TFM_OK) {
        sync_parent_dir(af->path);
        free(af->tmp);
        af->tmp = NULL;
    }
    tfm_atomic_abort(af);
    return st;
}

void tfm_atomic_abort(tfm_atomic_file *af) {
    if (af->f) fclose(af->f);
    if (af->tmp) remove(af->tmp);
    free(af->tmp);
    free(af->path);
    memset(af, 0, sizeof *af);
}
