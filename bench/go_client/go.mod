module tcplab/bench/go_client

go 1.19
