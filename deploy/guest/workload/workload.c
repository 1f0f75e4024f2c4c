// vmhop guest workload: dirties memory at a set rate with partly compressible contents,
// re-verifies every page against a checksum kept beside it, optionally writes and re-reads a
// region of a disk, and prints a heartbeat on the console every period.
//
// Parameters come from the kernel command line (/proc/cmdline, or $VMHOP_CMDLINE when run
// on a host for a quick check):
//   vmhop.mem_mib=N     memory region size (default 64)
//   vmhop.rate_mib=R    dirty rate in MiB/s after the initial fill (default 8; 0 = none)
//   vmhop.verify_mib=V  verification rate in MiB/s (default 32); bounded so the guest idles
//   vmhop.hb_ms=T       heartbeat period (default 100)
//   vmhop.disk=PATH     block device to write and re-verify (default none)
//   vmhop.disk_mib=D    size of the disk region used (default 8)
//   vmhop.busy=P        CPU load: percent of each heartbeat period spent computing (default 0)
//
// The load can be changed while it runs: a line `busy P` on the console (/dev/ttyS0, the
// serial port the host's page-server holds) sets it; the workload answers `WORKLOAD busy P`.
// Heartbeat line (fields by position; parsed by the page-server):
//   HB <counter> <verify_ok_pages> <mem_errors> <passes> <disk_ok> <disk_errors>
// A failed check also prints one ERR line saying what differed.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/mman.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096u
#define WORDS (PAGE / 8u)
#define DISK_BLOCK 65536u
#define PAGE_MAGIC 0x766d686f70504147ull  // "vmhopPAG"
#define DISK_MAGIC 0x766d686f70444953ull  // "vmhopDIS"

struct params {
  unsigned long mem_mib, rate_mib, verify_mib, hb_ms, disk_mib, busy;
  char disk[256];
};

static unsigned long param_ul(const char *cmdline, const char *key, unsigned long dflt) {
  const char *p = cmdline;
  size_t n = strlen(key);
  while ((p = strstr(p, key)) != NULL) {
    if ((p == cmdline || p[-1] == ' ') && p[n] == '=') return strtoul(p + n + 1, NULL, 10);
    p += n;
  }
  return dflt;
}

static void param_str(const char *cmdline, const char *key, char *out, size_t cap) {
  const char *p = cmdline;
  size_t n = strlen(key);
  out[0] = 0;
  while ((p = strstr(p, key)) != NULL) {
    if ((p == cmdline || p[-1] == ' ') && p[n] == '=') {
      p += n + 1;
      size_t i = 0;
      while (p[i] && p[i] != ' ' && p[i] != '\n' && i + 1 < cap) {
        out[i] = p[i];
        i++;
      }
      out[i] = 0;
      return;
    }
    p += n;
  }
}

static void read_params(struct params *pr) {
  static char cmdline[4096];
  const char *env = getenv("VMHOP_CMDLINE");
  if (env) {
    snprintf(cmdline, sizeof cmdline, "%s", env);
  } else {
    FILE *f = fopen("/proc/cmdline", "r");
    size_t n = f ? fread(cmdline, 1, sizeof cmdline - 1, f) : 0;
    cmdline[n] = 0;
    if (f) fclose(f);
  }
  pr->mem_mib = param_ul(cmdline, "vmhop.mem_mib", 64);
  pr->rate_mib = param_ul(cmdline, "vmhop.rate_mib", 8);
  pr->verify_mib = param_ul(cmdline, "vmhop.verify_mib", 32);
  pr->hb_ms = param_ul(cmdline, "vmhop.hb_ms", 100);
  pr->disk_mib = param_ul(cmdline, "vmhop.disk_mib", 8);
  pr->busy = param_ul(cmdline, "vmhop.busy", 0);
  param_str(cmdline, "vmhop.disk", pr->disk, sizeof pr->disk);
  if (pr->mem_mib == 0) pr->mem_mib = 1;
  if (pr->hb_ms == 0) pr->hb_ms = 100;
  if (pr->verify_mib == 0) pr->verify_mib = 1;
  if (pr->busy > 100) pr->busy = 100;
}

// The console as an input: non-blocking, no echo (the serial log shows the workload's answer,
// not the request). In a guest it is the serial port; on a host, stdin. -1: no input.
static int console_open(void) {
  int fd = getenv("VMHOP_CMDLINE") ? dup(0) : open("/dev/ttyS0", O_RDONLY | O_NONBLOCK | O_NOCTTY);
  if (fd < 0) return -1;
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  struct termios t;
  if (tcgetattr(fd, &t) == 0) {
    t.c_lflag &= ~(tcflag_t)(ECHO | ECHONL);
    tcsetattr(fd, TCSANOW, &t);
  }
  return fd;
}

// Reads what arrived on the console; each complete `busy P` line sets *busy (0..100).
static void console_poll(int fd, unsigned long *busy) {
  static char line[64];
  static size_t len;
  char buf[256];
  if (fd < 0) return;
  struct pollfd p = {fd, POLLIN, 0};
  while (poll(&p, 1, 0) > 0 && (p.revents & POLLIN)) {
    ssize_t n = read(fd, buf, sizeof buf);
    if (n <= 0) return;
    for (ssize_t i = 0; i < n; i++) {
      char c = buf[i];
      if (c != '\n' && c != '\r') {
        if (len + 1 < sizeof line) line[len++] = c;
        continue;
      }
      line[len] = 0;
      len = 0;
      unsigned long v;
      char extra;
      if (sscanf(line, "busy %lu %c", &v, &extra) == 1 && v <= 100) {
        *busy = v;
        printf("WORKLOAD busy %lu\n", v);
      }
    }
  }
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t mix(uint64_t x) {  // splitmix64 finaliser
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

static uint64_t checksum(const uint64_t *w, size_t n) {
  uint64_t h = 0x9e3779b97f4a7c15ull;
  for (size_t i = 0; i < n; i++) h = (h ^ w[i]) * 0x100000001b3ull + (h >> 29);
  return h;
}

// Contents: a header (magic, index, generation), then half pseudo-random words (incompressible)
// and half English-like text varying with the generation (compressible), like a real heap.
static const char text[] =
    "the quick brown fox jumps over the lazy dog while the page-server pulls pages on fault ";

static void fill(uint64_t *w, size_t nwords, uint64_t magic, uint64_t index, uint64_t gen) {
  w[0] = magic;
  w[1] = index;
  w[2] = gen;
  uint64_t s = mix(index * 0x9e3779b97f4a7c15ull + gen);
  size_t half = nwords / 2;
  for (size_t i = 3; i < half; i++) {
    s = mix(s + i);
    w[i] = s;
  }
  char *c = (char *)&w[half];
  size_t bytes = (nwords - half) * 8, off = (size_t)(gen % (sizeof text - 1));
  for (size_t i = 0; i < bytes; i++) c[i] = text[(off + i) % (sizeof text - 1)];
}

struct mem {
  uint64_t *pages;   // npages * WORDS
  uint64_t *sums;    // checksum per page
  uint64_t *gens;    // generation per page (0 = never written)
  size_t npages, dirty_cursor, verify_cursor;
  uint64_t verify_ok, errors, passes;
};

static void mem_write(struct mem *m, size_t p) {
  uint64_t *w = m->pages + p * WORDS;
  m->gens[p]++;
  fill(w, WORDS, PAGE_MAGIC, p, m->gens[p]);
  m->sums[p] = checksum(w, WORDS);
}

static void mem_verify(struct mem *m, size_t p) {
  if (m->gens[p] == 0) return;
  const uint64_t *w = m->pages + p * WORDS;
  uint64_t sum = checksum(w, WORDS);
  if (sum == m->sums[p] && w[0] == PAGE_MAGIC && w[1] == p && w[2] == m->gens[p]) {
    m->verify_ok++;
    return;
  }
  m->errors++;
  printf("ERR mem page=%zu gen=%llu found_magic=%llx found_index=%llu found_gen=%llu sum=%llx want=%llx\n", p,
         (unsigned long long)m->gens[p], (unsigned long long)w[0], (unsigned long long)w[1],
         (unsigned long long)w[2], (unsigned long long)sum, (unsigned long long)m->sums[p]);
  fflush(stdout);
  mem_write(m, p);  // re-arm so one bad page is reported once
}

struct disk {
  int fd;
  size_t nblocks, cursor;
  uint64_t *gens;
  uint64_t *buf;
  uint64_t ok, errors;
};

static int disk_open(struct disk *d, const char *path, unsigned long mib) {
  memset(d, 0, sizeof *d);
  d->fd = -1;
  if (!path[0]) return 0;
  // The device node may appear a moment after the driver loads.
  for (int tries = 0; tries < 50 && d->fd < 0; tries++) {
    d->fd = open(path, O_RDWR | O_DIRECT | O_SYNC);
    if (d->fd < 0) usleep(100000);
  }
  if (d->fd < 0) {
    printf("ERR disk open %s: %s\n", path, strerror(errno));
    return -1;
  }
  d->nblocks = (size_t)mib * 1024 * 1024 / DISK_BLOCK;
  if (d->nblocks == 0) d->nblocks = 1;
  d->gens = calloc(d->nblocks, sizeof *d->gens);
  if (posix_memalign((void **)&d->buf, PAGE, DISK_BLOCK) != 0 || !d->gens) return -1;
  return 0;
}

// One step: write the next block, then read back a block written earlier and check it.
static void disk_step(struct disk *d, uint64_t seed) {
  if (d->fd < 0) return;
  size_t b = d->cursor;
  d->cursor = (d->cursor + 1) % d->nblocks;
  d->gens[b]++;
  fill(d->buf, DISK_BLOCK / 8, DISK_MAGIC, b, d->gens[b]);
  if (pwrite(d->fd, d->buf, DISK_BLOCK, (off_t)b * DISK_BLOCK) != (ssize_t)DISK_BLOCK) {
    d->errors++;
    printf("ERR disk write block=%zu: %s\n", b, strerror(errno));
    return;
  }
  size_t r = (size_t)(mix(seed) % d->nblocks);
  if (d->gens[r] == 0) r = b;
  memset(d->buf, 0, DISK_BLOCK);
  if (pread(d->fd, d->buf, DISK_BLOCK, (off_t)r * DISK_BLOCK) != (ssize_t)DISK_BLOCK) {
    d->errors++;
    printf("ERR disk read block=%zu: %s\n", r, strerror(errno));
    return;
  }
  static uint64_t want[DISK_BLOCK / 8];
  fill(want, DISK_BLOCK / 8, DISK_MAGIC, r, d->gens[r]);
  if (memcmp(want, d->buf, DISK_BLOCK) == 0) {
    d->ok++;
  } else {
    d->errors++;
    printf("ERR disk block=%zu gen=%llu found_index=%llu found_gen=%llu\n", r, (unsigned long long)d->gens[r],
           (unsigned long long)d->buf[1], (unsigned long long)d->buf[2]);
  }
}

static void sleep_until(uint64_t t) {
  uint64_t n = now_ns();
  if (t <= n) return;
  struct timespec ts = {(time_t)((t - n) / 1000000000ull), (long)((t - n) % 1000000000ull)};
  nanosleep(&ts, NULL);
}

int main(void) {
  struct params pr;
  read_params(&pr);
  setvbuf(stdout, NULL, _IOLBF, 0);
  printf("WORKLOAD start mem_mib=%lu rate_mib=%lu verify_mib=%lu hb_ms=%lu disk=%s disk_mib=%lu busy=%lu\n",
         pr.mem_mib, pr.rate_mib, pr.verify_mib, pr.hb_ms, pr.disk[0] ? pr.disk : "none", pr.disk_mib, pr.busy);
  const int console = console_open();

  struct mem m = {0};
  m.npages = (size_t)pr.mem_mib * 1024 * 1024 / PAGE;
  m.pages = mmap(NULL, m.npages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  m.sums = calloc(m.npages, sizeof *m.sums);
  m.gens = calloc(m.npages, sizeof *m.gens);
  if (m.pages == MAP_FAILED || !m.sums || !m.gens) {
    printf("ERR cannot allocate %lu MiB\n", pr.mem_mib);
    return 1;
  }
  struct disk d;
  if (disk_open(&d, pr.disk, pr.disk_mib) != 0) d.errors++;

  const uint64_t period = (uint64_t)pr.hb_ms * 1000000ull;
  const size_t chunk = 64;  // pages between clock checks
  // Page budgets per period; the initial fill runs unthrottled but keeps the heartbeat going.
  const double dirty_per_period = (double)pr.rate_mib * 256.0 * (double)pr.hb_ms / 1000.0;
  const double verify_per_period = (double)pr.verify_mib * 256.0 * (double)pr.hb_ms / 1000.0;
  size_t filled = 0;
  uint64_t counter = 0, next_hb = now_ns() + period;
  double dirty_credit = 0, verify_credit = 0;

  for (;;) {
    uint64_t t = now_ns();
    if (t >= next_hb) {
      counter++;
      disk_step(&d, counter);
      printf("HB %llu %llu %llu %llu %llu %llu\n", (unsigned long long)counter, (unsigned long long)m.verify_ok,
             (unsigned long long)m.errors, (unsigned long long)m.passes, (unsigned long long)d.ok,
             (unsigned long long)d.errors);
      // After a long stall (paused VM, post-copy faults) don't try to catch up.
      next_hb = t - next_hb > period ? t + period : next_hb + period;
      console_poll(console, &pr.busy);
      if (filled == m.npages) {
        dirty_credit = dirty_credit > dirty_per_period ? dirty_per_period : dirty_credit + dirty_per_period;
        verify_credit = verify_credit > verify_per_period ? verify_per_period : verify_credit + verify_per_period;
      }
    }
    if (filled < m.npages) {
      size_t end = filled + chunk < m.npages ? filled + chunk : m.npages;
      for (; filled < end; filled++) mem_write(&m, filled);
      if (filled == m.npages) printf("WORKLOAD filled %lu MiB\n", pr.mem_mib);
      continue;
    }
    if (dirty_credit >= 1) {
      for (size_t i = 0; i < chunk && dirty_credit >= 1; i++, dirty_credit -= 1) {
        mem_write(&m, m.dirty_cursor);
        m.dirty_cursor = (m.dirty_cursor + 1) % m.npages;
      }
      continue;
    }
    if (verify_credit >= 1) {
      for (size_t i = 0; i < chunk && verify_credit >= 1; i++, verify_credit -= 1) {
        mem_verify(&m, m.verify_cursor);
        if (++m.verify_cursor == m.npages) {
          m.verify_cursor = 0;
          m.passes++;
        }
      }
      continue;
    }
    // The CPU load: compute (spin on the clock) for busy % of the period, then idle.
    const uint64_t busy_until = next_hb - period + period / 100 * pr.busy;
    while (now_ns() < busy_until) {
    }
    sleep_until(next_hb);
  }
}
