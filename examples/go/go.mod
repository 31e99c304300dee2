module tcplab/examples/go

go 1.19
