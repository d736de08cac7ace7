/* sfwrite: the deploy ramdisk's image writer (built by build.py against Debian's libcrypto and zlib).
 *
 *   wget -O- URL | sfwrite raw|gzip SIZE DEVICE
 *
 * Reads the image stream on stdin and writes it to DEVICE from offset 0 in 1 MiB blocks, computing the SHA-256 of
 * the stream as it arrives (of the bytes read: the compressed file for gzip, inflated in-process with zlib).  One
 * process instead of a tee/sha256sum/dd pipeline: under emulation every extra pipe hop cost more than the hash.
 *
 * Before the first byte is written the first MiB of the data to write is sniffed: qcow2/gzip/xz/zstd/bzip2/vmdk/
 * vhdx magic where raw disk data was promised is refused.  Exactly SIZE bytes must be written: a longer stream is
 * refused before writing past SIZE, a shorter one is a short read.  Every written block's writeback is started at
 * once (sync_file_range), so the disk works while the next block is read and hashed instead of everything being
 * flushed at the end; fsync()s DEVICE at the end.
 *
 * All-zero blocks are not written but zeroed with BLKZEROOUT (coalesced into ranges): devices with a write-zeroes
 * command (NVMe, SCSI WRITE SAME, virtio-blk) do that without moving the bytes, and a sparse stemcell image then
 * costs little more than its data; where the ioctl fails the zeros are written.
 *
 * stdout on success: "bytes=<n> sha256=<hex> zeroed=<bytes zeroed by BLKZEROOUT>".  Exit status: 0 ok, 1 usage or I/O error, 2 refused (nothing
 * written), 3 longer than SIZE, 4 shorter than SIZE, 5 invalid gzip stream; the reason on stderr (one line).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#define BLK (1024 * 1024)

static int dev = -1;
static const char *devname;
static unsigned char *wbuf;
static size_t wlen;
static long long written, limit;
static int sniffed;
static void die(int code, const char *fmt, ...) __attribute__((noreturn, format(printf, 2, 3)));
static const unsigned char zeros[BLK];
static long long zstart = -1, zend = -1, zeroed; /* pending all-zero range [zstart, zend) */

static void pwrite_all(const unsigned char *p, size_t n, long long at) {
    size_t off = 0;
    while (off < n) {
        ssize_t w = pwrite(dev, p + off, n - off, (off_t)(at + (long long)off));
        if (w < 0) {
            if (errno == EINTR) continue;
            die(1, "writing %s at byte %lld: %s", devname, at + (long long)off, strerror(errno));
        }
        off += (size_t)w;
    }
    (void)sync_file_range(dev, (off_t)at, (off_t)n, SYNC_FILE_RANGE_WRITE); /* a hint: errors surface at fsync */
}

/* Zero the pending range: BLKZEROOUT, or plain zero writes where the device cannot. */
static void flush_zeros(void) {
    if (zstart < 0) return;
    uint64_t range[2] = {(uint64_t)zstart, (uint64_t)(zend - zstart)};
    if (ioctl(dev, BLKZEROOUT, range) == 0) {
        zeroed += zend - zstart;
    } else {
        for (long long at = zstart; at < zend; at += BLK) {
            long long n = zend - at < BLK ? zend - at : BLK;
            pwrite_all(zeros, (size_t)n, at);
        }
    }
    zstart = zend = -1;
}

static void die(int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(code);
}

static ssize_t read_full(int fd, unsigned char *buf, size_t n) {
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        if (r == 0) break;
        got += (size_t)r;
    }
    return (ssize_t)got;
}

static const char *sniff(const unsigned char *b, size_t n) {
    if (n >= 4 && !memcmp(b, "QFI\xfb", 4)) return "qcow2 (magic QFI\\xfb)";
    if (n >= 2 && b[0] == 0x1f && b[1] == 0x8b) return "gzip (magic 1f8b)";
    if (n >= 6 && !memcmp(b, "\xfd" "7zXZ\0", 6)) return "xz (magic fd377a585a00)";
    if (n >= 4 && !memcmp(b, "\x28\xb5\x2f\xfd", 4)) return "zstd (magic 28b52ffd)";
    if (n >= 3 && !memcmp(b, "BZh", 3)) return "bzip2 (magic BZh)";
    if (n >= 4 && !memcmp(b, "KDMV", 4)) return "vmdk (magic KDMV)";
    if (n >= 8 && !memcmp(b, "vhdxfile", 8)) return "vhdx (magic vhdxfile)";
    return NULL;
}

/* Write the buffered block (sniffing the very first one). */
static void flush_block(void) {
    if (wlen == 0) return;
    if (!sniffed) {
        const char *what = sniff(wbuf, wlen);
        if (what) die(2, "the image is %s, but raw disk data was promised; nothing written", what);
        sniffed = 1;
    }
    /* whole 512-byte sectors of zeros go to the zero range (BLKZEROOUT needs sector alignment) */
    if (wlen % 512 == 0 && !memcmp(wbuf, zeros, wlen)) {
        if (zstart < 0) zstart = written;
        zend = written + (long long)wlen;
    } else {
        flush_zeros();
        pwrite_all(wbuf, wlen, written);
    }
    written += (long long)wlen;
    wlen = 0;
}

/* Queue n bytes of output; full 1 MiB blocks are written. */
static void emit(const unsigned char *p, size_t n) {
    if (written + (long long)wlen + (long long)n > limit)
        die(3, "the image stream is longer than SIZE (%lld bytes)", limit);
    while (n > 0) {
        size_t take = BLK - wlen;
        if (take > n) take = n;
        memcpy(wbuf + wlen, p, take);
        wlen += take;
        p += take;
        n -= take;
        if (wlen == BLK) flush_block();
    }
}

int main(int argc, char **argv) {
    if (argc != 4 || (strcmp(argv[1], "raw") && strcmp(argv[1], "gzip")))
        die(1, "usage: sfwrite raw|gzip SIZE DEVICE < image");
    int gz = !strcmp(argv[1], "gzip");
    char *end;
    limit = strtoll(argv[2], &end, 10);
    if (*end || limit <= 0) die(1, "SIZE must be a positive byte count, not '%s'", argv[2]);
    devname = argv[3];
    dev = open(devname, O_WRONLY | O_CLOEXEC);
    if (dev < 0) die(1, "opening %s: %s", devname, strerror(errno));
    unsigned char *in = malloc(BLK), *out = malloc(BLK);
    wbuf = malloc(BLK);
    if (!in || !out || !wbuf) die(1, "out of memory");
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    if (!md || !EVP_DigestInit_ex(md, EVP_sha256(), NULL)) die(1, "SHA-256 is not available");

    z_stream zs;
    memset(&zs, 0, sizeof zs);
    int zdone = 0;
    if (gz && inflateInit2(&zs, 16 + MAX_WBITS) != Z_OK) die(1, "zlib: inflateInit2 failed");
    long long got_in = 0;
    for (;;) {
        ssize_t n = read_full(0, in, BLK);
        if (n < 0) die(1, "reading the image stream: %s", strerror(errno));
        if (n == 0) break;
        got_in += n;
        EVP_DigestUpdate(md, in, (size_t)n);
        if (!gz) {
            emit(in, (size_t)n);
            continue;
        }
        zs.next_in = in;
        zs.avail_in = (uInt)n;
        while (zs.avail_in > 0) {
            if (zdone) { /* another gzip member follows (concatenated gzip is valid gzip) */
                if (inflateReset(&zs) != Z_OK) die(5, "zlib: inflateReset failed");
                zdone = 0;
            }
            zs.next_out = out;
            zs.avail_out = BLK;
            int rc = inflate(&zs, Z_NO_FLUSH);
            if (rc == Z_STREAM_END) zdone = 1;
            else if (rc != Z_OK && rc != Z_BUF_ERROR)
                die(5, "SF_IMAGE_FORMAT=gzip but the download is not a valid gzip stream: %s",
                    zs.msg ? zs.msg : "inflate failed");
            emit(out, BLK - zs.avail_out);
            if (rc == Z_BUF_ERROR && zs.avail_out != 0) break;
        }
    }
    if (gz) {
        /* drain what zlib still holds */
        while (!zdone && got_in > 0) {
            zs.next_out = out;
            zs.avail_out = BLK;
            int rc = inflate(&zs, Z_FINISH);
            emit(out, BLK - zs.avail_out);
            if (rc == Z_STREAM_END) zdone = 1;
            else if (zs.avail_out != 0)
                die(5, "the gzip stream is truncated or corrupt after %lld bytes read", got_in);
        }
        inflateEnd(&zs);
    }
    if (got_in == 0) die(4, "the image stream is empty");
    flush_block();
    flush_zeros();
    if (written != limit) die(4, "short read: the stream ended after %lld of %lld bytes", written, limit);
    if (fsync(dev) != 0) die(1, "fsync %s: %s", devname, strerror(errno));
    unsigned char digest[32];
    unsigned int dlen = 0;
    EVP_DigestFinal_ex(md, digest, &dlen);
    printf("bytes=%lld sha256=", written);
    for (unsigned int i = 0; i < dlen; i++) printf("%02x", digest[i]);
    printf(" zeroed=%lld\n", zeroed);
    return 0;
}
