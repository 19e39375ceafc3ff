// counterplugin is tether's Go counter plugin fixture: proto.Counter served with
// go-plugin, whose Put dials the host's AddHelper through the broker to do its sums.
package main

import (
	"context"
	"os"
	"sync"

	hclog "github.com/hashicorp/go-hclog"
	plugin "github.com/hashicorp/go-plugin"

	"tetherinterop/proto"
	"tetherinterop/shared"
)

type counter struct {
	proto.UnimplementedCounterServer
	broker *plugin.GRPCBroker
	log    hclog.Logger
	mu     sync.Mutex
	values map[string]int64
}

func (c *counter) Put(ctx context.Context, req *proto.CounterPutRequest) (*proto.CounterEmpty, error) {
	conn, err := c.broker.Dial(req.AddServer)
	if err != nil {
		c.log.Error("could not dial the host's AddHelper", "id", req.AddServer, "error", err)
		return nil, err
	}
	defer conn.Close()
	c.mu.Lock()
	defer c.mu.Unlock()
	sum, err := proto.NewAddHelperClient(conn).Sum(ctx, &proto.SumRequest{A: c.values[req.Key], B: req.Value})
	if err != nil {
		return nil, err
	}
	c.values[req.Key] = sum.R
	c.log.Info("added through the host", "key", req.Key, "value", sum.R)
	return &proto.CounterEmpty{}, nil
}

func (c *counter) Get(ctx context.Context, req *proto.CounterGetRequest) (*proto.CounterGetResponse, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return &proto.CounterGetResponse{Value: c.values[req.Key]}, nil
}

func main() {
	log := hclog.New(&hclog.LoggerOptions{
		Name:       "counterplugin",
		Level:      hclog.Debug,
		Output:     os.Stderr,
		JSONFormat: true,
	})
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig: shared.Handshake,
		Plugins: map[string]plugin.Plugin{
			"counter": &shared.CounterPlugin{NewServer: func(broker *plugin.GRPCBroker) proto.CounterServer {
				return &counter{broker: broker, log: log, values: map[string]int64{}}
			}},
		},
		GRPCServer: plugin.DefaultGRPCServer,
	})
}
