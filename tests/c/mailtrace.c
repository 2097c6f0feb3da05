/* Mail-like data through system calls, then a crash: for tests/test_bugreport_canary.py.
 * usage: mailtrace HOOK_COMMAND NAME
 * Runs the hook through system() as Postfix's debug_process() does, prints
 * "hook=RC", waits for one byte on stdin, then writes canary strings (a
 * message body, addresses after \0 and \t, IPv4 and IPv6 addresses, a
 * key=value client address) to /dev/null and to a pipe it reads back, sends
 * a datagram to an IPv4 and an IPv6 documentation address (a quote in a buffer
 * too: ltrace does not escape it), and dereferences
 * NULL: strace's trace tail in the crash report holds all of it.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <fcntl.h>
#include "hook.h"  /* run_hook(); stdio, stdlib, string, sys/wait, unistd */

static volatile int *null_pointer;

static const char *const canaries[] = {
    "Subject: canary-SUBJ-7f3a\r\n\r\ncanary body 9c1e\r\n",
    "key\0canary1@example.org",
    "S\tcanary2@vmcanary",
    "R\ncanary3@hostcanary.example.net\r\n",
    "peer 203.0.113.45 and 2001:db8:cafe::17\n",
    "log_client_address=198.51.100.77\n",
    "\"canary4@quoted.example\" <canary5@angle.example>\n",
    "Quote: \"canary6\", canary7 said \"bye\"\n",
};
static const size_t lengths[] = {
    sizeof("Subject: canary-SUBJ-7f3a\r\n\r\ncanary body 9c1e\r\n") - 1,
    sizeof("key\0canary1@example.org") - 1,
    sizeof("S\tcanary2@vmcanary") - 1,
    sizeof("R\ncanary3@hostcanary.example.net\r\n") - 1,
    sizeof("peer 203.0.113.45 and 2001:db8:cafe::17\n") - 1,
    sizeof("log_client_address=198.51.100.77\n") - 1,
    sizeof("\"canary4@quoted.example\" <canary5@angle.example>\n") - 1,
    sizeof("Quote: \"canary6\", canary7 said \"bye\"\n") - 1,
};

static void send_datagrams(void)
{
    struct sockaddr_in in4 = {.sin_family = AF_INET, .sin_port = htons(9)};
    struct sockaddr_in6 in6 = {.sin6_family = AF_INET6, .sin6_port = htons(9)};
    int fd;

    inet_pton(AF_INET, "198.51.100.77", &in4.sin_addr);
    inet_pton(AF_INET6, "2001:db8:cafe::17", &in6.sin6_addr);
    fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd >= 0) {
        (void) sendto(fd, canaries[0], lengths[0], MSG_DONTWAIT, (struct sockaddr *) &in4, sizeof(in4));
        close(fd);
    }
    fd = socket(AF_INET6, SOCK_DGRAM, 0);
    if (fd >= 0) {
        (void) sendto(fd, canaries[1], lengths[1], MSG_DONTWAIT, (struct sockaddr *) &in6, sizeof(in6));
        close(fd);
    }
}

int main(int argc, char **argv)
{
    char buf[256];
    int null_fd, pipe_fds[2];
    size_t i;

    if (argc != 3) {
        fprintf(stderr, "usage: mailtrace HOOK_COMMAND NAME\n");
        return 2;
    }
    run_hook(argv[1], argv[2]);
    if (read(0, buf, 1) < 0)
        return 2;
    null_fd = open("/dev/null", O_WRONLY);
    if (null_fd < 0 || pipe(pipe_fds) < 0)
        return 2;
    for (i = 0; i < sizeof(lengths) / sizeof(lengths[0]); i++) {
        if (write(null_fd, canaries[i], lengths[i]) < 0 || write(pipe_fds[1], canaries[i], lengths[i]) < 0)
            return 2;
        if (read(pipe_fds[0], buf, sizeof(buf)) < 0)
            return 2;
    }
    send_datagrams();
    return *null_pointer;
}
