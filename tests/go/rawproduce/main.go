// rawproduce writes one record, whose value and header keys and values are
// given as hex, to partition 0 of a topic. Kafka takes any bytes for a
// header key; clients whose keys are strings of UTF-8 (Java's, librdkafka's
// through rust-rdkafka and confluent-kafka) cannot write some of them, Go's
// can.
//
//	rawproduce BROKERS TOPIC VALUE_HEX [KEY_HEX=VALUE_HEX ...]
package main

import (
	"context"
	"encoding/hex"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "rawproduce:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) < 3 {
		return fmt.Errorf("usage: rawproduce BROKERS TOPIC VALUE_HEX [KEY_HEX=VALUE_HEX ...]")
	}
	value, err := hex.DecodeString(args[2])
	if err != nil {
		return fmt.Errorf("value: %w", err)
	}
	record := &kgo.Record{Topic: args[1], Partition: 0, Value: value}
	for _, header := range args[3:] {
		k, v, ok := strings.Cut(header, "=")
		if !ok {
			return fmt.Errorf("header %q is not KEY_HEX=VALUE_HEX", header)
		}
		key, err := hex.DecodeString(k)
		if err != nil {
			return fmt.Errorf("header key %q: %w", k, err)
		}
		val, err := hex.DecodeString(v)
		if err != nil {
			return fmt.Errorf("header value %q: %w", v, err)
		}
		record.Headers = append(record.Headers, kgo.RecordHeader{Key: string(key), Value: val})
	}
	client, err := kgo.NewClient(
		kgo.SeedBrokers(strings.Split(args[0], ",")...),
		kgo.RecordPartitioner(kgo.ManualPartitioner()),
	)
	if err != nil {
		return err
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return client.ProduceSync(ctx, record).FirstErr()
}
