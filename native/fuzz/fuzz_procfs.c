/* fuzz_procfs.c: the /proc text parsers of procfs.c over arbitrary bytes. The first byte
 * picks the parser (stat, status, a /proc/stat text through the line reader and the btime
 * parser, argv); the rest is the file's text. The line reader (from a memfd, with a small
 * buffer) must give back every byte but the newlines when no line is cut. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "core.h"
#include "fuzz_check.h"
#include "msgpack.h"
#include "procfs.h"

static void lines_agree(const char *text, size_t len)
{
    int fd = memfd_create("stat", MFD_CLOEXEC);
    CHECK(fd >= 0);
    size_t off = 0;
    while (off < len) {
        ssize_t n = write(fd, text + off, len - off);
        CHECK(n > 0);
        off += (size_t)n;
    }
    CHECK(lseek(fd, 0, SEEK_SET) == 0);
    char buf[48];
    struct pf_lines r;
    pf_lines_init(&r, fd, buf, sizeof buf);
    const char *line;
    size_t n;
    int cut, any_cut = 0, st;
    size_t total = 0, lines = 0;
    while ((st = pf_lines_next(&r, &line, &n, &cut)) == 1) {
        CHECK(n <= sizeof buf && line >= buf && line + n <= buf + sizeof buf);
        CHECK(memchr(line, '\n', n) == NULL);
        any_cut |= cut;
        total += n;
        lines++;
        uint64_t btime;
        (void)pf_parse_btime_line(line, n, &btime);
        CHECK(lines <= len + 1);
    }
    CHECK(st == 0);
    close(fd);
    if (!any_cut)
        CHECK(total + lines >= len && total <= len); /* every byte but the newlines */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const char *text = (const char *)data + 1;
    size_t len = size - 1;
    switch (data[0] % 4) {
    case 0: {
        struct pf_stat s;
        if (pf_parse_stat(text, len, &s) == 0) {
            CHECK(s.comm_len <= sizeof s.comm);
            CHECK(s.pid >= 0 && s.ppid >= 0);
        }
        break;
    }
    case 1: {
        struct pf_status s;
        int st = pf_parse_status(text, len, &s);
        CHECK(st == 0 || !(s.has_uid && s.has_gid));
        break;
    }
    case 2: {
        uint64_t btime;
        (void)pf_parse_btime_line(text, len, &btime);
        if (len <= 4096)
            lines_agree(text, len);
        break;
    }
    default: {
        /* argv: the encoded array must read back as one array of str/bin items. */
        mp_buf e;
        CHECK(mp_init(&e, 8192) == AM_OK);
        int cut = 0;
        uint32_t max_args = 1 + (len > 0 ? (uint8_t)text[0] % 64 : 0);
        /* The first byte's top bit: the text is the start of a longer cmdline (a cut read). */
        int more = len > 0 && ((uint8_t)text[0] & 0x80) != 0;
        int st = pf_encode_argv(&e, text, len, more, max_args, &cut);
        if (st == AM_OK) {
            struct mpc_item it;
            CHECK(mpc_read(e.data, e.len, &it) == 1 && it.kind == MPC_ARRAY);
            CHECK(it.u <= max_args);
            size_t off = it.size;
            size_t bytes = 0;
            for (uint64_t k = 0; k < it.u; k++) {
                struct mpc_item a;
                CHECK(mpc_read(e.data + off, e.len - off, &a) == 1);
                CHECK(a.kind == MPC_STR || a.kind == MPC_BIN);
                CHECK(memchr(a.data, '\0', a.len) == NULL);
                bytes += a.len;
                off += a.size;
            }
            CHECK(off == e.len && bytes <= len);
            if (more) {
                /* Only arguments that ended before the cut: nothing after the last NUL. */
                size_t whole = len;
                while (whole > 0 && text[whole - 1] != '\0')
                    whole--;
                CHECK(cut && bytes + it.u <= whole);
            }
            if (!cut && len > 0)
                CHECK(bytes + it.u - (text[len - 1] == '\0' ? 0 : 1) == len);
        } else {
            CHECK(st == AM_ERR_FULL);
        }
        mp_release(&e);
        break;
    }
    }
    return 0;
}
