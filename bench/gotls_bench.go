// Benchmark target for `capture gotls` (bench/bench_capture.py; not part of ecap).
//
//	gotls_bench PORT SIZE COUNT   connect to tls_bench's server, handshake, print
//	                              "ready"; then per line on stdin: "w" one
//	                              (*tls.Conn).Write(SIZE) (a warm-up, answered "ok"),
//	                              "go" COUNT back-to-back writes of SIZE, print the
//	                              elapsed ns and exit
//
// The reader is bench/tls_bench.c's server, the same one the C target writes to, and
// the protocol is tls_bench.c's client's.
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
	write := func() {
		if n, err := conn.Write(buf); err != nil || n != size {
			fmt.Fprintln(os.Stderr, "gotls_bench: short write:", err)
			os.Exit(1)
		}
	}
	fmt.Println("ready")
	lines := bufio.NewScanner(os.Stdin)
	for lines.Scan() && lines.Text() != "go" {
		write()
		fmt.Println("ok")
	}
	if lines.Err() != nil || lines.Text() != "go" {
		fmt.Fprintln(os.Stderr, "gotls_bench: stdin closed before go")
		os.Exit(1)
	}
	start := time.Now()
	for i := 0; i < count; i++ {
		write()
	}
	elapsed := time.Since(start)
	conn.Close()
	fmt.Println(elapsed.Nanoseconds())
}
