package captureproxy.origin;

import io.netty.bootstrap.ServerBootstrap;
import io.netty.buffer.ByteBuf;
import io.netty.buffer.Unpooled;
import io.netty.channel.Channel;
import io.netty.channel.ChannelFuture;
import io.netty.channel.ChannelFutureListener;
import io.netty.channel.ChannelHandlerContext;
import io.netty.channel.ChannelInboundHandlerAdapter;
import io.netty.channel.ChannelInitializer;
import io.netty.channel.ChannelOption;
import io.netty.channel.ChannelPipeline;
import io.netty.channel.EventLoopGroup;
import io.netty.channel.FixedRecvByteBufAllocator;
import io.netty.channel.nio.NioEventLoopGroup;
import io.netty.channel.socket.nio.NioServerSocketChannel;
import io.netty.handler.codec.ByteToMessageDecoder;
import io.netty.handler.codec.http.DefaultFullHttpResponse;
import io.netty.handler.codec.http.FullHttpRequest;
import io.netty.handler.codec.http.FullHttpResponse;
import io.netty.handler.codec.http.HttpContent;
import io.netty.handler.codec.http.HttpContentDecompressor;
import io.netty.handler.codec.http.HttpMessage;
import io.netty.handler.codec.http.HttpMethod;
import io.netty.handler.codec.http.HttpObjectAggregator;
import io.netty.handler.codec.http.HttpRequest;
import io.netty.handler.codec.http.HttpRequestDecoder;
import io.netty.handler.codec.http.HttpResponseEncoder;
import io.netty.handler.codec.http.HttpResponseStatus;
import io.netty.handler.codec.http.HttpServerCodec;
import io.netty.handler.codec.http.HttpServerUpgradeHandler;
import io.netty.handler.codec.http.HttpVersion;
import io.netty.handler.codec.http2.CleartextHttp2ServerUpgradeHandler;
import io.netty.handler.codec.http2.Http2CodecUtil;
import io.netty.handler.codec.http2.Http2FrameCodec;
import io.netty.handler.codec.http2.Http2FrameCodecBuilder;
import io.netty.handler.codec.http2.Http2MultiplexHandler;
import io.netty.handler.codec.http2.Http2ServerUpgradeCodec;
import io.netty.handler.codec.http2.Http2Settings;
import io.netty.handler.codec.http2.Http2StreamFrameToHttpObjectCodec;
import io.netty.util.AsciiString;
import io.netty.util.ReferenceCountUtil;

import java.io.FileOutputStream;
import java.io.IOException;
import java.io.OutputStream;
import java.io.PrintStream;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Base64;
import java.util.List;
import java.util.Map;
import java.util.concurrent.atomic.AtomicLong;

/**
 * A test origin for capture-proxy's framing-parity tests: an HTTP server on Netty's HTTP codec
 * whose channel pipeline is the one the source cluster builds in its Netty4HttpServerTransport,
 * so that the bytes a client sends are cut into requests exactly where the source cuts them.
 *
 * <p>Two pipeline profiles (chosen by the caller per release, see scripts/netty-origins.sh):
 * <ul>
 *   <li>{@code classic} (Elasticsearch 7.10, OpenSearch 1.x and 2.x): HttpRequestDecoder(max
 *   initial line, max header size, max chunk size) with the composite cumulator, then
 *   HttpContentDecompressor, HttpResponseEncoder, HttpObjectAggregator(max content length),
 *   then the request handler;</li>
 *   <li>{@code h2c} (OpenSearch 3.x): CleartextHttp2ServerUpgradeHandler around an
 *   HttpServerCodec (same limits, pipeline depth 128 where Netty has it) and an
 *   HttpServerUpgradeHandler(max content length) for {@code Upgrade: h2c}; the first HTTP/1.x
 *   message installs decompressor, aggregator and handler behind them; HTTP/2 streams (prior
 *   knowledge or upgrade) get frame-to-HTTP-object codec, decompressor, aggregator, handler.</li>
 * </ul>
 *
 * <p>What the source does with a request that reached its handler is reproduced where it affects
 * framing: a request whose decoder result failed gets a 400 and is not executed; every other one
 * is "executed" (logged) and answered 200; the connection is closed after the response exactly
 * when the source's HttpUtils.shouldCloseConnection says so (first Connection value "close",
 * HTTP/1.0 without "keep-alive", or a protocol version the source cannot name). Responses carry
 * the request's protocol version, Content-Type and Content-Length and nothing else, as the
 * source's do. The source's REST layer (routing, parameter or Content-Type validation, unknown
 * methods) is out of scope: a request the HTTP layer dispatched counts as executed.
 *
 * <p>Log: one JSON object per line, appended to the log file and flushed at once:
 * {@code {"event":"open","conn":N}}, {@code {"event":"request",...}} for each executed request
 * (conn, seq, proto, method, uri, version, headers as [name, value] pairs in order as the
 * decoder produced them, body as base64 of the de-chunked body before decompression),
 * {@code "rejected"} (decoder failure, answered 400; with "error"), {@code "discarded"} (a
 * request head the decoder produced that never reached the handler, e.g. answered 413/417 by
 * the aggregator), {@code "exception"}, and {@code {"event":"close","conn":N}} once the
 * connection is closed and the pipeline has processed everything it had read.
 */
public final class NettyOrigin {

    /** The source's defaults (Elasticsearch 7.10 HttpTransportSettings, unchanged in OpenSearch). */
    static final class Settings {
        int maxInitialLine = 4 * 1024;
        int maxHeader = 8 * 1024;
        int maxChunk = 8 * 1024;
        int maxContent = 100 * 1024 * 1024;
        /** http.netty.receive_predictor_size: a fixed 64 KiB read buffer. */
        int receivePredictor = 64 * 1024;
        /** http.netty.max_composite_buffer_components: max content length / MTU 1500. */
        int maxCompositeComponents;
        /** OpenSearch 3.x http.netty.pipeline.depth (passed to HttpServerCodec where Netty has it). */
        int pipelineDepth = 128;
        String profile = "classic";
        String log;
    }

    private static final HttpVersion HTTP_2_0 = HttpVersion.valueOf("HTTP/2.0");
    private static final HttpVersion HTTP_3_0 = HttpVersion.valueOf("HTTP/3.0");

    /** Appends log lines (ASCII JSON) and flushes each. */
    static final class Log {
        private final OutputStream out;

        Log(String path) throws IOException {
            this.out = new FileOutputStream(path, true);
        }

        synchronized void line(String json) {
            try {
                out.write(json.getBytes(StandardCharsets.US_ASCII));
                out.write('\n');
                out.flush();
            } catch (IOException e) {
                throw new RuntimeException("writing the origin log failed", e);
            }
        }
    }

    static String q(CharSequence s) {
        StringBuilder b = new StringBuilder(s.length() + 2);
        b.append('"');
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            if (c == '"' || c == '\\') {
                b.append('\\').append(c);
            } else if (c < 0x20 || c >= 0x7f) {
                b.append(String.format("\\u%04x", (int) c));
            } else {
                b.append(c);
            }
        }
        return b.append('"').toString();
    }

    /** A request head as the decoder produced it, plus the body bytes that followed it. */
    static final class Snapshot {
        final long seq;
        final String method;
        final String uri;
        final String version;
        final List<String[]> headers = new ArrayList<>();
        final java.io.ByteArrayOutputStream body = new java.io.ByteArrayOutputStream();
        boolean consumed;

        Snapshot(long seq, HttpRequest r) {
            this.seq = seq;
            this.method = r.method().name();
            this.uri = r.uri();
            this.version = r.protocolVersion().text();
            for (Map.Entry<String, String> e : r.headers()) {
                headers.add(new String[] {e.getKey(), e.getValue()});
            }
        }

        String json(String event, long conn, String proto, String extra) {
            StringBuilder b = new StringBuilder(256);
            b.append("{\"event\":").append(q(event));
            b.append(",\"conn\":").append(conn).append(",\"seq\":").append(seq);
            b.append(",\"proto\":").append(q(proto));
            b.append(",\"method\":").append(q(method));
            b.append(",\"uri\":").append(q(uri));
            b.append(",\"version\":").append(q(version));
            b.append(",\"headers\":[");
            for (int i = 0; i < headers.size(); i++) {
                if (i > 0) {
                    b.append(',');
                }
                b.append('[').append(q(headers.get(i)[0])).append(',').append(q(headers.get(i)[1])).append(']');
            }
            b.append("],\"body\":").append(q(Base64.getEncoder().encodeToString(body.toByteArray())));
            if (extra != null) {
                b.append(',').append(extra);
            }
            return b.append('}').toString();
        }
    }

    /** Per-connection state: id in accept order, request counter, the head being aggregated. */
    static final class Conn {
        final long id;
        final Log log;
        final boolean h2Profile;
        long seq;
        Snapshot current;

        Conn(long id, Log log, boolean h2Profile) {
            this.id = id;
            this.log = log;
            this.h2Profile = h2Profile;
        }

        void start(HttpRequest r) {
            dropPending("superseded by the next request head");
            current = new Snapshot(++seq, r);
        }

        void dropPending(String why) {
            if (current != null && !current.consumed) {
                current.consumed = true;
                log.line(current.json("discarded", id, "h1", "\"reason\":" + q(why)));
            }
        }
    }

    /** First handler: logs open, and close once the whole pipeline has seen the channel go inactive. */
    static final class ConnEvents extends ChannelInboundHandlerAdapter {
        private final Conn conn;

        ConnEvents(Conn conn) {
            this.conn = conn;
        }

        @Override
        public void channelActive(ChannelHandlerContext ctx) {
            conn.log.line("{\"event\":\"open\",\"conn\":" + conn.id + "}");
            ctx.fireChannelActive();
        }

        @Override
        public void channelInactive(ChannelHandlerContext ctx) {
            try {
                ctx.fireChannelInactive();
            } finally {
                conn.dropPending("connection closed before the request completed");
                conn.log.line("{\"event\":\"close\",\"conn\":" + conn.id + "}");
            }
        }
    }

    /**
     * Right behind the decoder: copies each request head and its (de-chunked, still compressed)
     * content before decompressor and aggregator rewrite headers (Content-Length,
     * Transfer-Encoding, Expect). Passes everything on unchanged.
     */
    static final class Tap extends ChannelInboundHandlerAdapter {
        private final Conn conn;

        Tap(Conn conn) {
            this.conn = conn;
        }

        @Override
        public void channelRead(ChannelHandlerContext ctx, Object msg) {
            if (msg instanceof HttpRequest) {
                conn.start((HttpRequest) msg);
            }
            if (msg instanceof HttpContent && conn.current != null) {
                ByteBuf c = ((HttpContent) msg).content();
                byte[] b = new byte[c.readableBytes()];
                c.getBytes(c.readerIndex(), b);
                conn.current.body.write(b, 0, b.length);
            }
            ctx.fireChannelRead(msg);
        }
    }

    /** The source's HttpUtils.shouldCloseConnection with its Netty4HttpRequest.protocolVersion. */
    static boolean shouldClose(HttpRequest req, boolean h2Profile) {
        HttpVersion v = req.protocolVersion();
        boolean http10;
        if (v.equals(HttpVersion.HTTP_1_0)) {
            http10 = true;
        } else if (v.equals(HttpVersion.HTTP_1_1)) {
            http10 = false;
        } else if (h2Profile && (v.equals(HTTP_2_0) || v.equals(HTTP_3_0))) {
            http10 = false;
        } else {
            return true; // the source's protocolVersion() throws: it always closes
        }
        String connection = req.headers().get("connection");
        return "close".equalsIgnoreCase(connection) || (http10 && !"keep-alive".equalsIgnoreCase(connection));
    }

    static void respond(Channel ch, HttpRequest req, HttpResponseStatus status, String json, boolean close) {
        byte[] body = json.getBytes(StandardCharsets.UTF_8);
        boolean head = HttpMethod.HEAD.equals(req.method());
        FullHttpResponse resp = new DefaultFullHttpResponse(req.protocolVersion(), status,
            head ? Unpooled.EMPTY_BUFFER : Unpooled.wrappedBuffer(body));
        resp.headers().set("content-type", "application/json; charset=UTF-8");
        resp.headers().set("content-length", String.valueOf(body.length));
        ChannelFuture f = ch.writeAndFlush(resp);
        if (close) {
            f.addListener(ChannelFutureListener.CLOSE);
        }
    }

    /** The request handler at the end of the HTTP/1.x pipeline (after the aggregator). */
    static final class Exec extends ChannelInboundHandlerAdapter {
        private final Conn conn;

        Exec(Conn conn) {
            this.conn = conn;
        }

        @Override
        public void channelRead(ChannelHandlerContext ctx, Object msg) {
            if (!(msg instanceof FullHttpRequest)) {
                ReferenceCountUtil.release(msg);
                return;
            }
            FullHttpRequest req = (FullHttpRequest) msg;
            try {
                Snapshot s = conn.current;
                if (s == null || s.consumed) {
                    s = new Snapshot(++conn.seq, req); // not seen by the tap (cannot happen in these pipelines)
                }
                s.consumed = true;
                boolean close = shouldClose(req, conn.h2Profile);
                if (req.decoderResult().isFailure()) {
                    Throwable cause = req.decoderResult().cause();
                    String err = String.valueOf(cause);
                    conn.log.line(s.json("rejected", conn.id, "h1", "\"error\":" + q(err)));
                    respond(ctx.channel(), req, HttpResponseStatus.BAD_REQUEST,
                        "{\"error\":" + q(err) + ",\"status\":400}", close);
                } else {
                    conn.log.line(s.json("request", conn.id, "h1", null));
                    respond(ctx.channel(), req, HttpResponseStatus.OK,
                        "{\"method\":" + q(req.method().name()) + ",\"uri\":" + q(req.uri()) + ",\"conn\":" + conn.id
                            + ",\"seq\":" + s.seq + "}", close);
                }
            } finally {
                req.release();
            }
        }

        @Override
        public void exceptionCaught(ChannelHandlerContext ctx, Throwable cause) {
            // The source's onException: log and close the channel.
            conn.log.line("{\"event\":\"exception\",\"conn\":" + conn.id + ",\"error\":" + q(String.valueOf(cause)) + "}");
            ctx.close();
        }
    }

    /** Handler of one HTTP/2 stream (h2c profile): logs what the stream carried and answers. */
    static final class StreamExec extends ChannelInboundHandlerAdapter {
        private final Conn conn;

        StreamExec(Conn conn) {
            this.conn = conn;
        }

        @Override
        public void channelRead(ChannelHandlerContext ctx, Object msg) {
            if (!(msg instanceof FullHttpRequest)) {
                ReferenceCountUtil.release(msg);
                return;
            }
            FullHttpRequest req = (FullHttpRequest) msg;
            try {
                Snapshot s;
                synchronized (conn) {
                    s = new Snapshot(++conn.seq, req);
                }
                byte[] b = new byte[req.content().readableBytes()];
                req.content().getBytes(req.content().readerIndex(), b);
                s.body.write(b, 0, b.length);
                if (req.decoderResult().isFailure()) {
                    conn.log.line(s.json("rejected", conn.id, "h2", "\"error\":" + q(String.valueOf(req.decoderResult().cause()))));
                    respond(ctx.channel(), req, HttpResponseStatus.BAD_REQUEST, "{\"status\":400}", false);
                } else {
                    conn.log.line(s.json("request", conn.id, "h2", null));
                    respond(ctx.channel(), req, HttpResponseStatus.OK,
                        "{\"method\":" + q(req.method().name()) + ",\"uri\":" + q(req.uri()) + "}", false);
                }
            } finally {
                req.release();
            }
        }

        @Override
        public void exceptionCaught(ChannelHandlerContext ctx, Throwable cause) {
            conn.log.line("{\"event\":\"exception\",\"conn\":" + conn.id + ",\"error\":" + q(String.valueOf(cause)) + "}");
            ctx.close();
        }
    }

    static HttpObjectAggregator aggregator(Settings s) {
        HttpObjectAggregator a = new HttpObjectAggregator(s.maxContent);
        a.setMaxCumulationBufferComponents(s.maxCompositeComponents);
        return a;
    }

    /** The Elasticsearch 7.10 / OpenSearch 1.x / 2.x pipeline. */
    static void classicPipeline(Channel ch, Settings s, Conn conn) {
        ChannelPipeline p = ch.pipeline();
        HttpRequestDecoder decoder = new HttpRequestDecoder(s.maxInitialLine, s.maxHeader, s.maxChunk);
        decoder.setCumulator(ByteToMessageDecoder.COMPOSITE_CUMULATOR);
        p.addLast("conn_events", new ConnEvents(conn));
        p.addLast("decoder", decoder);
        p.addLast("tap", new Tap(conn));
        p.addLast("decoder_compress", new HttpContentDecompressor());
        p.addLast("encoder", new HttpResponseEncoder());
        p.addLast("aggregator", aggregator(s));
        // The source's request/response creators and pipelining handler only wrap objects and
        // order responses; this handler answers synchronously, in request order.
        p.addLast("handler", new Exec(conn));
    }

    /** HttpServerCodec as OpenSearch 3.x builds it (HttpDecoderConfig where this Netty has it). */
    static HttpServerCodec serverCodec(Settings s) {
        try {
            Class<?> cfgClass = Class.forName("io.netty.handler.codec.http.HttpDecoderConfig");
            Object cfg = cfgClass.getConstructor().newInstance();
            cfgClass.getMethod("setMaxInitialLineLength", int.class).invoke(cfg, s.maxInitialLine);
            cfgClass.getMethod("setMaxHeaderSize", int.class).invoke(cfg, s.maxHeader);
            cfgClass.getMethod("setMaxChunkSize", int.class).invoke(cfg, s.maxChunk);
            try {
                return (HttpServerCodec) HttpServerCodec.class.getConstructor(cfgClass, int.class).newInstance(cfg, s.pipelineDepth);
            } catch (NoSuchMethodException e) {
                return (HttpServerCodec) HttpServerCodec.class.getConstructor(cfgClass).newInstance(cfg);
            }
        } catch (ClassNotFoundException e) {
            return new HttpServerCodec(s.maxInitialLine, s.maxHeader, s.maxChunk);
        } catch (ReflectiveOperationException e) {
            throw new IllegalStateException("cannot build HttpServerCodec", e);
        }
    }

    static Http2FrameCodec http2FrameCodec(Settings s) {
        return Http2FrameCodecBuilder.forServer().initialSettings(Http2Settings.defaultSettings().maxHeaderListSize(s.maxHeader)).build();
    }

    static ChannelInitializer<Channel> streamInitializer(Settings s, Conn conn) {
        return new ChannelInitializer<Channel>() {
            @Override
            protected void initChannel(Channel child) {
                child.pipeline()
                    .addLast(new Http2StreamFrameToHttpObjectCodec(true))
                    .addLast("decoder_decompress", new HttpContentDecompressor())
                    .addLast("aggregator", aggregator(s))
                    .addLast("handler", new StreamExec(conn));
            }
        };
    }

    /** The OpenSearch 3.x pipeline: h2c by prior knowledge or Upgrade, else HTTP/1.x as classic. */
    static void h2cPipeline(Channel ch, Settings s, Conn conn) {
        HttpServerCodec codec = serverCodec(s);
        HttpServerUpgradeHandler.UpgradeCodecFactory factory = protocol -> {
            if (AsciiString.contentEquals(Http2CodecUtil.HTTP_UPGRADE_PROTOCOL_NAME, protocol)) {
                return new Http2ServerUpgradeCodec(http2FrameCodec(s), new Http2MultiplexHandler(streamInitializer(s, conn)));
            }
            return null;
        };
        HttpServerUpgradeHandler upgrade = new HttpServerUpgradeHandler(codec, factory, s.maxContent);
        ChannelInitializer<Channel> priorKnowledge = new ChannelInitializer<Channel>() {
            @Override
            protected void initChannel(Channel parent) {
                parent.pipeline().addLast(http2FrameCodec(s)).addLast(new Http2MultiplexHandler(streamInitializer(s, conn)));
            }
        };
        ChannelPipeline p = ch.pipeline();
        p.addLast("conn_events", new ConnEvents(conn));
        // Inserts codec and upgrade handler right behind itself, i.e. before the tap.
        p.addLast(new CleartextHttp2ServerUpgradeHandler(codec, upgrade, priorKnowledge));
        p.addLast("tap", new Tap(conn));
        p.addLast(new ChannelInboundHandlerAdapter() {
            private boolean installed;

            @Override
            public void channelRead(ChannelHandlerContext ctx, Object msg) {
                if (installed || !(msg instanceof HttpMessage)) {
                    ctx.fireChannelRead(msg);
                    return;
                }
                installed = true;
                // The first HTTP/1.x message: no upgrade happened; install the rest as OpenSearch does.
                ChannelPipeline pl = ctx.pipeline();
                pl.addAfter(ctx.name(), "handler", new Exec(conn));
                pl.replace(this, "header_verifier", new ChannelInboundHandlerAdapter());
                pl.addAfter("header_verifier", "decoder_compress", new HttpContentDecompressor());
                pl.addAfter("decoder_compress", "aggregator", aggregator(s));
                ctx.fireChannelRead(msg);
            }
        });
    }

    static Settings parse(String[] args) {
        Settings s = new Settings();
        for (int i = 0; i < args.length; i++) {
            String a = args[i];
            String v = i + 1 < args.length ? args[i + 1] : null;
            switch (a) {
                case "--log": s.log = v; i++; break;
                case "--profile": s.profile = v; i++; break;
                case "--max-initial-line": s.maxInitialLine = Integer.parseInt(v); i++; break;
                case "--max-header": s.maxHeader = Integer.parseInt(v); i++; break;
                case "--max-chunk": s.maxChunk = Integer.parseInt(v); i++; break;
                case "--max-content": s.maxContent = Integer.parseInt(v); i++; break;
                default: throw new IllegalArgumentException("unknown argument " + a);
            }
        }
        if (s.log == null) {
            throw new IllegalArgumentException("--log FILE is required");
        }
        if (!s.profile.equals("classic") && !s.profile.equals("h2c")) {
            throw new IllegalArgumentException("--profile must be classic or h2c");
        }
        s.maxCompositeComponents = (int) Math.max(2, Math.min(Math.round((double) (s.maxContent / 1500)), Integer.MAX_VALUE));
        return s;
    }

    public static void main(String[] args) throws Exception {
        final Settings s = parse(args);
        final Log log = new Log(s.log);
        final AtomicLong ids = new AtomicLong();
        final boolean h2 = s.profile.equals("h2c");
        EventLoopGroup boss = new NioEventLoopGroup(1);
        // One worker thread: log lines of different connections keep a total order.
        EventLoopGroup workers = new NioEventLoopGroup(1);
        FixedRecvByteBufAllocator recv = new FixedRecvByteBufAllocator(s.receivePredictor);
        ServerBootstrap b = new ServerBootstrap()
            .group(boss, workers)
            .channel(NioServerSocketChannel.class)
            .option(ChannelOption.RCVBUF_ALLOCATOR, recv)
            .childOption(ChannelOption.RCVBUF_ALLOCATOR, recv)
            .childOption(ChannelOption.TCP_NODELAY, true)
            .childOption(ChannelOption.SO_KEEPALIVE, true)
            .childHandler(new ChannelInitializer<Channel>() {
                @Override
                protected void initChannel(Channel ch) {
                    Conn conn = new Conn(ids.incrementAndGet(), log, h2);
                    if (h2) {
                        h2cPipeline(ch, s, conn);
                    } else {
                        classicPipeline(ch, s, conn);
                    }
                }
            });
        Channel server = b.bind(new InetSocketAddress("127.0.0.1", 0)).sync().channel();
        PrintStream out = System.out;
        out.println(((InetSocketAddress) server.localAddress()).getPort());
        out.flush();
        // Runs until killed; a closed stdin is no reason to stop.
        server.closeFuture().sync();
    }

    private NettyOrigin() {
    }
}
