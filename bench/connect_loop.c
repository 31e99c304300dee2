/* The peer the bomber is measured against: the least a connect loop can do.
 *
 *   connect_loop server PORT        accept() and close() forever
 *   connect_loop client PORT COUNT [SECONDS [RATE]]
 *                                   COUNT x socket/connect/close (or until
 *                                   SECONDS have passed; at most RATE per
 *                                   second when given), prints conn/s
 *
 * Built at bench time by bench/actor_bomber.py and bench/builds.py (gcc -O2);
 * bench/event_loss.py also runs N clients at once as a load generator for the
 * probes. Loopback only.
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

static double since(const struct timespec *t0) {
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    return (t1.tv_sec - t0->tv_sec) + (t1.tv_nsec - t0->tv_nsec) / 1e9;
}

static int bomb(int port, long count, double seconds, double rate) {
    struct sockaddr_in a = loopback(port);
    struct timespec t0;
    long ok = 0, failed = 0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long i = 0; i < count; i++) {
        /* The clock is read every 256 connections only: it costs ~20 ns. */
        if (seconds > 0 && (i & 255) == 0 && since(&t0) >= seconds)
            break;
        /* Paced: connection i is due at i / RATE; sleep when ahead. */
        if (rate > 0 && (i & 15) == 0) {
            double ahead = i / rate - since(&t0);
            if (ahead > 0) {
                struct timespec d = {(time_t)ahead, (long)((ahead - (time_t)ahead) * 1e9)};
                nanosleep(&d, NULL);
            }
        }
        int s = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(s, (struct sockaddr *)&a, sizeof a) == 0)
            ok++;
        else
            failed++;
        close(s);
    }
    double secs = since(&t0);
    printf("%.1f %ld %ld\n", ok / secs, ok, failed);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "server") == 0)
        return serve(atoi(argv[2]));
    if (argc >= 4 && argc <= 6 && strcmp(argv[1], "client") == 0)
        return bomb(atoi(argv[2]), atol(argv[3]), argc >= 5 ? atof(argv[4]) : 0,
                    argc == 6 ? atof(argv[5]) : 0);
    fprintf(stderr, "usage: connect_loop server PORT | connect_loop client PORT COUNT [SECONDS [RATE]]\n");
    return 2;
}
