/* The peer the bomber is measured against: the least a connect loop can do.
 *
 *   connect_loop server PORT        accept() and close() forever
 *   connect_loop client PORT COUNT  COUNT x socket/connect/close, prints conn/s
 *
 * Built at bench time by bench/actor_bomber.py (gcc -O2). Loopback only.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static struct sockaddr_in loopback(int port) {
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((unsigned short)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
}

static int serve(int port) {
    struct sockaddr_in a = loopback(port);
    int one = 1, l = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 4096)) {
        perror("listen");
        return 1;
    }
    printf("listening\n");
    fflush(stdout);
    for (;;) {
        int c = accept(l, NULL, NULL);
        if (c >= 0)
            close(c);
    }
}

static int bomb(int port, long count) {
    struct sockaddr_in a = loopback(port);
    struct timespec t0, t1;
    long ok = 0, failed = 0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long i = 0; i < count; i++) {
        int s = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(s, (struct sockaddr *)&a, sizeof a) == 0)
            ok++;
        else
            failed++;
        close(s);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double secs = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
    printf("%.1f %ld %ld\n", ok / secs, ok, failed);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "server") == 0)
        return serve(atoi(argv[2]));
    if (argc == 4 && strcmp(argv[1], "client") == 0)
        return bomb(atoi(argv[2]), atol(argv[3]));
    fprintf(stderr, "usage: connect_loop server PORT | connect_loop client PORT COUNT\n");
    return 2;
}
