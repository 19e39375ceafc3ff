// gobench measures go-plugin's side of tether's benchmarks (`cargo xtask bench`) with
// the interop fixtures, and prints one JSON object: the latency of each measured
// operation, in nanoseconds, in order.
//
//	gobench coldstart <kvplugin> <n>       NewClient, start, dispense and first Ping; then Kill
//	gobench ping <kvplugin> <n>            host -> plugin health check (Ping)
//	gobench callback <counterplugin> <n>   Counter.Put: a new brokered AddHelper per call,
//	                                       dialed by the plugin, which calls Sum
//
// Each latency run is preceded by a warm-up of n/10 calls.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io/ioutil"
	"os"
	"os/exec"
	"strconv"
	"time"

	hclog "github.com/hashicorp/go-hclog"
	plugin "github.com/hashicorp/go-plugin"

	"tetherinterop/proto"
	"tetherinterop/shared"
)

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "gobench: "+format+"\n", args...)
	os.Exit(1)
}

type adder struct {
	proto.UnimplementedAddHelperServer
}

func (adder) Sum(ctx context.Context, req *proto.SumRequest) (*proto.SumResponse, error) {
	return &proto.SumResponse{R: req.A + req.B}, nil
}

func start(path string) (*plugin.Client, plugin.ClientProtocol) {
	client := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig: shared.Handshake,
		Plugins: map[string]plugin.Plugin{
			"kv":      &shared.KVPlugin{},
			"counter": &shared.CounterPlugin{},
		},
		Cmd:              exec.Command(path),
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		Logger:           hclog.New(&hclog.LoggerOptions{Output: ioutil.Discard, Level: hclog.Error}),
	})
	rpc, err := client.Client()
	if err != nil {
		client.Kill()
		fail("starting %s: %v", path, err)
	}
	return client, rpc
}

func main() {
	if len(os.Args) != 4 {
		fail("usage: gobench coldstart|ping|callback <plugin> <n>")
	}
	kind, path := os.Args[1], os.Args[2]
	n, err := strconv.Atoi(os.Args[3])
	if err != nil || n < 1 {
		fail("bad count %q", os.Args[3])
	}
	nanos := make([]int64, 0, n)
	switch kind {
	case "coldstart":
		for i := 0; i < n; i++ {
			began := time.Now()
			client, rpc := start(path)
			if _, err := rpc.Dispense("kv"); err != nil {
				fail("dispense: %v", err)
			}
			if err := rpc.Ping(); err != nil {
				fail("ping: %v", err)
			}
			nanos = append(nanos, time.Since(began).Nanoseconds())
			client.Kill()
		}
	case "ping":
		client, rpc := start(path)
		defer client.Kill()
		for i := 0; i < n/10+n; i++ {
			began := time.Now()
			if err := rpc.Ping(); err != nil {
				fail("ping: %v", err)
			}
			if i >= n/10 {
				nanos = append(nanos, time.Since(began).Nanoseconds())
			}
		}
	case "callback":
		client, rpc := start(path)
		defer client.Kill()
		raw, err := rpc.Dispense("counter")
		if err != nil {
			fail("dispense: %v", err)
		}
		counter := raw.(*shared.CounterClient)
		ctx := context.Background()
		for i := 0; i < n/10+n; i++ {
			began := time.Now()
			if err := counter.Put(ctx, "k", 1, adder{}); err != nil {
				fail("put: %v", err)
			}
			if i >= n/10 {
				nanos = append(nanos, time.Since(began).Nanoseconds())
			}
		}
	default:
		fail("unknown kind %q", kind)
	}
	out, err := json.Marshal(map[string]interface{}{"kind": kind, "nanos": nanos})
	if err != nil {
		fail("json: %v", err)
	}
	fmt.Println(string(out))
}
