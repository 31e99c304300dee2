/* A leaking TCP server that is not one of tcplab's actors: the seed's
 * CLOSE_WAIT lesson in C. It accepts one client at a time, reads until the
 * peer closes (read returns 0), and never closes the fd: every connection
 * stays in CLOSE_WAIT on this side, FIN_WAIT2 on the client's.
 *
 * Usage: leaky_server PORT   (0: any; the port chosen is printed on stdout)
 */
#define _GNU_SOURCE /* accept4 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(argc > 1 ? atoi(argv[1]) : 0)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(addr);
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&addr, sizeof(addr)) || listen(lfd, 128) ||
        getsockname(lfd, (struct sockaddr *)&addr, &len)) {
        perror("leaky_server");
        return 1;
    }
    printf("%d\n", ntohs(addr.sin_port));
    fflush(stdout);
    char buf[4096];
    for (;;) {
        struct sockaddr_in peer;
        socklen_t plen = sizeof(peer);
        int fd = accept4(lfd, (struct sockaddr *)&peer, &plen, 0);
        if (fd < 0) {
            perror("accept4");
            return 1;
        }
        while (read(fd, buf, sizeof(buf)) > 0)
            ;
        /* the bug: no close(fd) */
    }
}
