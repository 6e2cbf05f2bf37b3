// Benchmark target for `capture gotls` (bench/bench_capture.py; not part of ecap).
//
//	gotls_bench PORT SIZE COUNT   connect to tls_bench's server, handshake, wait for a
//	                              line on stdin, then COUNT back-to-back
//	                              (*tls.Conn).Write(SIZE); print elapsed ns
//
// The reader is bench/tls_bench.c's server, the same one the C target writes to.
package main

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"os"
	"strconv"
	"time"
)

func main() {
	size, _ := strconv.Atoi(os.Args[2])
	count, _ := strconv.Atoi(os.Args[3])
	conn, err := tls.Dial("tcp", "127.0.0.1:"+os.Args[1], &tls.Config{InsecureSkipVerify: true})
	if err == nil {
		err = conn.Handshake()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "gotls_bench:", err)
		os.Exit(1)
	}
	buf := make([]byte, size)
	for i := range buf {
		buf[i] = byte('a' + i%26)
	}
	bufio.NewReader(os.Stdin).ReadString('\n')
	start := time.Now()
	for i := 0; i < count; i++ {
		if n, err := conn.Write(buf); err != nil || n != size {
			fmt.Fprintln(os.Stderr, "gotls_bench: short write:", err)
			os.Exit(1)
		}
	}
	elapsed := time.Since(start)
	conn.Close()
	fmt.Println(elapsed.Nanoseconds())
}
