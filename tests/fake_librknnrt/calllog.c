/*
 * calllog.c: what the fake says and does besides the API: the call log, the
 * "E RKNN:" lines, and the faults a model file asks of rknn_run.
 *
 * The call log is the file named by RKNN_FAKE_CALL_LOG (no log when unset):
 * one line a call, "pid=<pid> tid=<tid> call=<name> key=value ...", written
 * with a single write() on an O_APPEND descriptor so that the workers of a
 * farm can share one file without interleaving their lines.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "fake_internal.h"

#define LINE_MAX_BYTES 2048

static void write_all(int fd, const char *text, size_t length)
{
    while (length) {
        ssize_t n = write(fd, text, length);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return;
        text += n;
        length -= (size_t)n;
    }
}

/* Formats the message after the `length` bytes of prefix already in line, ends it with a newline
 * (cut to LINE_MAX_BYTES) and returns the line's length. */
static size_t compose(char *line, int length, const char *format, va_list args)
{
    length += vsnprintf(line + length, LINE_MAX_BYTES - (size_t)length - 1, format, args);
    if (length > LINE_MAX_BYTES - 2)
        length = LINE_MAX_BYTES - 2;
    line[length++] = '\n';
    return (size_t)length;
}

void fake_log(const char *format, ...)
{
    const char *path = getenv("RKNN_FAKE_CALL_LOG");
    char line[LINE_MAX_BYTES];
    size_t length;
    int prefix, fd;
    va_list args;
    if (!path || !*path)
        return;
    prefix = snprintf(line, sizeof line, "pid=%d tid=%ld ", (int)getpid(), (long)syscall(SYS_gettid));
    va_start(args, format);
    length = compose(line, prefix, format, args);
    va_end(args);
    fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        return;
    write_all(fd, line, length);
    close(fd);
}

/* "E RKNN: [hh:mm:ss.mmm] <message>" on fd 2, as librknnrt prints its errors. */
void fake_error(const char *format, ...)
{
    char line[LINE_MAX_BYTES];
    struct timeval now;
    struct tm local;
    size_t length;
    int prefix;
    va_list args;
    gettimeofday(&now, NULL);
    localtime_r(&now.tv_sec, &local);
    prefix = snprintf(line, sizeof line, "E RKNN: [%02d:%02d:%02d.%03ld] ", local.tm_hour, local.tm_min,
                      local.tm_sec, (long)(now.tv_usec / 1000));
    va_start(args, format);
    length = compose(line, prefix, format, args);
    va_end(args);
    write_all(2, line, length);
}

static void sleep_ms(long ms)
{
    struct timespec left = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&left, &left) != 0 && errno == EINTR)
        ;
}

/* Memory that grows: allocated, every page written (so it counts in the RSS), never freed. The
 * blocks are chained from a global so that the compiler cannot drop the malloc and the stores. */
static void *volatile leaked;

static void leak(int mib)
{
    size_t size = (size_t)mib << 20;
    volatile char *block = malloc(size);
    if (!block)
        return;
    for (size_t i = 0; i < size; i += 4096)
        block[i] = 1;
    *(void *volatile *)block = leaked;
    leaked = (void *)block;
}

/* Applies the model's run faults to its run number `run` (1-based); 0 or the code rknn_run returns. */
int fake_before_run(const fake_faults *f, long run)
{
    if (f->leak_mib > 0 && run > f->leak_after)
        leak(f->leak_mib);
    if (f->slow_ms > 0 && run > f->slow_after)
        sleep_ms(f->slow_ms);
    if (f->segfault && run > f->segfault_after) {
        /* A real SIGSEGV, as a crashing NPU driver or custom op gives: the pointer is volatile
         * so that the compiler cannot turn the store into a trap instruction (SIGILL). */
        volatile int *volatile nowhere = NULL;
        fake_log("call=fault kind=segfault run=%ld", run);
        *nowhere = 1;
    }
    if (f->hang && run > f->hang_after) {
        fake_log("call=fault kind=hang run=%ld", run);
        for (;;)
            pause();
    }
    if (f->run_fail && run > f->run_fail_after) {
        fake_error("rknn_run: failure %d requested by the fake model file (run %ld of this model)",
                   f->run_fail, run);
        return f->run_fail;
    }
    return 0;
}
