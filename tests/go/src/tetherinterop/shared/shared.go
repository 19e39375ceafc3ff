// Package shared holds what tether's Go interop fixtures share: the handshake, and the
// go-plugin wrappers that serve and dispense the KV and Counter interfaces over gRPC.
package shared

import (
	"context"

	plugin "github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"

	"tetherinterop/proto"
)

// Handshake is go-plugin's example handshake: protocol version 1, BASIC_PLUGIN=hello.
var Handshake = plugin.HandshakeConfig{
	ProtocolVersion:  1,
	MagicCookieKey:   "BASIC_PLUGIN",
	MagicCookieValue: "hello",
}

// KVPlugin serves (plugin side) or dispenses (host side) proto.KV.
type KVPlugin struct {
	plugin.NetRPCUnsupportedPlugin
	// Impl is the implementation a plugin serves; unused on the host side.
	Impl proto.KVServer
}

// GRPCServer registers the KV service.
func (p *KVPlugin) GRPCServer(broker *plugin.GRPCBroker, s *grpc.Server) error {
	proto.RegisterKVServer(s, p.Impl)
	return nil
}

// GRPCClient returns a proto.KVClient.
func (p *KVPlugin) GRPCClient(ctx context.Context, broker *plugin.GRPCBroker, c *grpc.ClientConn) (interface{}, error) {
	return proto.NewKVClient(c), nil
}

// CounterPlugin serves (plugin side) or dispenses (host side) proto.Counter.
type CounterPlugin struct {
	plugin.NetRPCUnsupportedPlugin
	// NewServer makes the implementation a plugin serves, given its broker.
	NewServer func(broker *plugin.GRPCBroker) proto.CounterServer
}

// GRPCServer registers the Counter service.
func (p *CounterPlugin) GRPCServer(broker *plugin.GRPCBroker, s *grpc.Server) error {
	proto.RegisterCounterServer(s, p.NewServer(broker))
	return nil
}

// GRPCClient returns a *CounterClient.
func (p *CounterPlugin) GRPCClient(ctx context.Context, broker *plugin.GRPCBroker, c *grpc.ClientConn) (interface{}, error) {
	return &CounterClient{Client: proto.NewCounterClient(c), Broker: broker}, nil
}

// CounterClient is the host's side of proto.Counter: Put serves an AddHelper on the
// broker for the plugin to dial.
type CounterClient struct {
	Client proto.CounterClient
	Broker *plugin.GRPCBroker
}

// Put adds value to key, the plugin calling back into helper to do the sum.
func (c *CounterClient) Put(ctx context.Context, key string, value int64, helper proto.AddHelperServer) error {
	id := c.Broker.NextId()
	var server *grpc.Server
	serve := func(opts []grpc.ServerOption) *grpc.Server {
		server = grpc.NewServer(opts...)
		proto.RegisterAddHelperServer(server, helper)
		return server
	}
	go c.Broker.AcceptAndServe(id, serve)
	_, err := c.Client.Put(ctx, &proto.CounterPutRequest{AddServer: id, Key: key, Value: value})
	if server != nil {
		server.Stop()
	}
	return err
}
