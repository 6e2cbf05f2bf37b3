// The gotls test client: an HTTPS client built four ways by tests/go_programs.py.
// It waits for one line on stdin (so a test can start a capture first), then
// does what its mode says and prints a summary of what it got back: the same
// output with and without a capture is part of what the tests check.
package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"syscall"
	"unsafe"
)

// body is n deterministic bytes (the same every run).
func body(n int, seed byte) []byte {
	out := make([]byte, n)
	for i := range out {
		out[i] = byte(i*7+int(seed)) ^ byte(i>>8)
	}
	return out
}

func exchange(client *http.Client, base string, n int, seed byte) {
	r, err := client.Post(base+"/echo", "application/octet-stream", bytes.NewReader(body(n, seed)))
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	got, _ := io.ReadAll(r.Body)
	r.Body.Close()
	fmt.Printf("%s %d echo %d bytes sha256 %x same %v\n", r.Proto, r.StatusCode, len(got),
		sha256.Sum256(got), bytes.Equal(got, body(n, seed)))
	r, err = client.Get(base + "/hello")
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	got, _ = io.ReadAll(r.Body)
	r.Body.Close()
	fmt.Printf("%s %d %q\n", r.Proto, r.StatusCode, got)
}

// requests: one HTTP/2 connection (Go's default when the server offers h2) and
// one HTTP/1.1 connection, each a POST of n bytes to /echo and a GET of /hello.
func requests(base string, n int) {
	h2 := &http.Client{Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, ForceAttemptHTTP2: true}}
	h1 := &http.Client{Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}},
		TLSNextProto:    map[string]func(string, *tls.Conn) http.RoundTripper{}}}
	exchange(h2, base, n, 1)
	exchange(h1, base, n, 2)
}

// tidConn notes whether each Read returned on another thread than it started on
// (the goroutine parked waiting for data and resumed elsewhere).
type tidConn struct {
	*tls.Conn
	reads, moved int
}

func (c *tidConn) Read(b []byte) (int, error) {
	before := syscall.Gettid()
	n, err := c.Conn.Read(b)
	c.reads++
	if syscall.Gettid() != before {
		c.moved++
	}
	return n, err
}

// pingpong: keep-alive HTTP/1.1 requests on one connection, one at a time.
func pingpong(addr string, n int) {
	conn, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}})
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	// Busy goroutines keep the scheduler's threads occupied, so a Read that parks
	// waiting for the response is usually resumed by another thread.
	for i := 0; i < 4; i++ {
		go func() {
			for {
				for j := 0; j < 100000; j++ {
				}
				runtime.Gosched()
			}
		}()
	}
	c := &tidConn{Conn: conn}
	rd := bufio.NewReader(c)
	// At least n requests, and more (up to 20n) until 5 Reads resumed on another thread.
	i := 0
	for ; i < n || (c.moved < 5 && i < 20*n); i++ {
		fmt.Fprintf(c, "GET /bytes?n=%d&seed=%d HTTP/1.1\r\nHost: test\r\n\r\n", 100+i%50, i)
		r, err := http.ReadResponse(rd, nil)
		if err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		io.Copy(io.Discard, r.Body)
		r.Body.Close()
	}
	fmt.Printf("pingpong %d requests\n", i)
	fmt.Fprintf(os.Stderr, "reads %d moved %d\n", c.reads, c.moved)
}

//go:noinline
func deep(depth int, f func()) {
	var pad [16]byte
	if depth > 0 {
		deep(depth-1, f)
	} else {
		f()
	}
	_ = pad
}

// grow: a request written from fresh goroutines (small stacks) at every depth up
// to n, one header line per Write, so that some Write prologues find the stack too
// small (runtime.morestack copies the stack and runs the function's entry again);
// then the response read into buffers on fresh goroutines' stacks, which move when
// the stack grows inside Read.
func grow(addr string, n int) {
	conn, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}})
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	lines := [][]byte{[]byte("GET /bytes?n=300000&seed=3 HTTP/1.1\r\n")}
	for depth := 0; depth < n; depth++ {
		lines = append(lines, []byte(fmt.Sprintf("X-Depth: %04d\r\n", depth)))
	}
	lines = append(lines, []byte("Host: test\r\nConnection: close\r\n\r\n"))
	for i, line := range lines {
		done := make(chan bool)
		go func() {
			deep(i%n, func() { conn.Write(line) })
			done <- true
		}()
		<-done
	}
	var got []byte
	moved, reads := 0, 0
	for i := 0; ; i++ {
		reads++
		result := make(chan int)
		go func() {
			deep(i%n, func() {
				var buf [1024]byte // on this goroutine's stack
				before := uintptr(unsafe.Pointer(&buf[0]))
				k, _ := conn.Read(buf[:])
				if uintptr(unsafe.Pointer(&buf[0])) != before {
					moved++
				}
				got = append(got, buf[:k]...)
				result <- k
			})
		}()
		if <-result <= 0 {
			break
		}
	}
	fmt.Printf("grow %d writes, %d bytes back, sha256 %x\n", len(lines), len(got), sha256.Sum256(got))
	fmt.Fprintf(os.Stderr, "reads %d moved %d\n", reads, moved)
}

// get: one GET of url over HTTP/1.1, the TLS version and suite chosen by tls
// ("1.3": Go picks the TLS 1.3 suite itself; "1.2-chacha20", "1.2-aes128gcm"),
// the body printed as it came.
func get(url, version string) {
	config := &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}}
	switch version {
	case "1.3":
		config.MinVersion = tls.VersionTLS13
	case "1.2-chacha20":
		config.MaxVersion = tls.VersionTLS12
		config.CipherSuites = []uint16{tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256}
	case "1.2-aes128gcm":
		config.MaxVersion = tls.VersionTLS12
		config.CipherSuites = []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256}
	}
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: config,
		TLSNextProto: map[string]func(string, *tls.Conn) http.RoundTripper{}}}
	r, err := client.Get(url)
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	got, _ := io.ReadAll(r.Body)
	r.Body.Close()
	os.Stdout.Write(got)
}

func main() {
	bufio.NewReader(os.Stdin).ReadString('\n')
	mode, target := os.Args[1], os.Args[2]
	n, _ := strconv.Atoi(os.Args[3])
	switch mode {
	case "requests":
		requests(target, n)
	case "pingpong":
		pingpong(target, n)
	case "grow":
		grow(target, n)
	case "get":
		get(target, os.Args[3])
	}
}
