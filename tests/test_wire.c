/* test_wire: the frame codec as pure functions. Headers and every request
 * body round-trip; every truncation and extension of a body is refused
 * without a crash; the fuzz corpus (tests/fuzz/corpus) is replayed and
 * seeded mutations of valid streams are parsed under the sanitizers.
 * `test_wire --write-corpus DIR` writes the seed corpus. */
#include "netutil.h"
#include <dirent.h>
#include <sys/stat.h>

static char corpus_dir[1024];

/* One request of every opcode, encoded; shape for append/attend. */
static eg_session_config shape;
static float qbuf[2 * 4 * 8], kbuf[2 * 1 * 3 * 8], vbuf[2 * 1 * 3 * 4];
static int64_t posbuf[2] = {5, 9};
static uint32_t tagbuf[3] = {1, 2, 3}, idbuf[3] = {7, 8, 9};
static float oracle[6] = {0.1f, 0.2f, 0.3f, 0.4f, 0.5f, 0.6f};

static void sample(int op, eg_request *r)
{
    memset(r, 0, sizeof *r);
    r->op = op;
    eg_session_config_init(&shape);
    shape.n_layers = 2; shape.n_kv_heads = 1; shape.n_q_heads = 4; shape.head_dim_k = 8; shape.head_dim_v = 4;
    snprintf(shape.fingerprint, sizeof shape.fingerprint, "model-x");
    for (size_t i = 0; i < sizeof qbuf / 4; i++) qbuf[i] = (float)i * 0.25f;
    for (size_t i = 0; i < sizeof kbuf / 4; i++) kbuf[i] = (float)i;
    for (size_t i = 0; i < sizeof vbuf / 4; i++) vbuf[i] = -(float)i;
    switch (op) {
    case EG_OP_HELLO: r->min_version = 1; r->max_version = 3; r->secret = "s3cret!"; r->secret_len = 7; break;
    case EG_OP_CREATE: snprintf(r->name, sizeof r->name, "sess"); r->config = shape; break;
    case EG_OP_OPEN: snprintf(r->name, sizeof r->name, "sess"); r->has_fingerprint = 1;
        snprintf(r->fingerprint, sizeof r->fingerprint, "model-x"); break;
    case EG_OP_CLOSE: case EG_OP_INFO: r->handle = 3; break;
    case EG_OP_LIST: snprintf(r->name, sizeof r->name, "a"); r->count = 10; break;
    case EG_OP_DROP: case EG_OP_VERIFY: snprintf(r->name, sizeof r->name, "sess"); break;
    case EG_OP_FORK: snprintf(r->name, sizeof r->name, "p"); snprintf(r->name2, sizeof r->name2, "c"); r->count = 17; break;
    case EG_OP_TRUNCATE: r->handle = 2; r->count = 40; break;
    case EG_OP_FETCH: r->handle = 1; r->layer = 1; r->kv_head = 0; r->segment = 4; r->want = 3; break;
    case EG_OP_APPEND: r->handle = 1;
        r->append = (eg_append_req){EG_DTYPE_F32, 3, -1, kbuf, vbuf, idbuf, 5}; break;
    case EG_OP_ROUTER_RESET: r->handle = 2; r->layer = 1; break;
    case EG_OP_ROUTER_TRAIN:
        r->handle = 1;
        eg_router_train_req_init(&r->train);
        r->train.layer = 1; r->train.n_queries = 2; r->train.q = qbuf; r->train.pos = posbuf;
        r->train.steps = 50; r->train.lr = 0.02f; r->train.recent_tokens = 64;
        break;
    case EG_OP_SELECT: case EG_OP_ATTEND:
        r->handle = 1;
        eg_attend_req_init(&r->attend);
        r->attend.layer = 1; r->attend.n_queries = 2; r->attend.q = qbuf; r->attend.pos = posbuf;
        r->attend.include_self = 1; r->attend.budget_tokens = 512; r->attend.max_lost = 0.05;
        r->attend.tags = tagbuf; r->attend.n_tags = 3; r->attend.router = EG_ROUTER_CENTROID;
        if (op == EG_OP_ATTEND) { r->attend.oracle_mass = oracle; r->n_oracle = 6; r->dense = 1; }
        r->attend.aggregate = op == EG_OP_ATTEND ? EG_ROUTE_AGG_MASS : EG_ROUTE_AGG_MAX;
        break;
    default: break;
    }
}

static int encode(int op, eg_buf *b)
{
    eg_request r;
    sample(op, &r);
    eg_buf_init(b);
    return eg_wire_encode_request(b, &r, 1000 + (uint64_t)op, &shape);
}

static void test_header(void)
{
    unsigned char hb[EG_NET_HEADER_BYTES];
    eg_frame_header h = {.version = 1, .opcode = EG_OP_ATTEND, .flags = 0, .request_id = 0x0102030405060708ull,
                         .body_len = 4096}, g;
    eg_frame_header_encode(&h, hb);
    CHECK(!memcmp(hb, "EGRM", 4));
    CHECK_EQ_INT(hb[16], 0x08); /* little-endian id */
    CHECK_NET(eg_frame_header_decode(hb, 1 << 20, &g));
    CHECK_EQ_INT(g.opcode, EG_OP_ATTEND);
    CHECK_EQ_INT(g.request_id, h.request_id);
    CHECK_EQ_INT(g.body_len, 4096);
    CHECK_NCODE(eg_frame_header_decode(hb, 4095, &g), EG_NET_ETOOBIG);
    CHECK_EQ_INT(g.request_id, h.request_id); /* still readable for the error answer */
    unsigned char x[EG_NET_HEADER_BYTES];
    memcpy(x, hb, sizeof x); x[3] = 'N';
    CHECK_NCODE(eg_frame_header_decode(x, 1 << 20, &g), EG_NET_EMAGIC);
    memcpy(x, hb, sizeof x); x[4] = 2;
    CHECK_NCODE(eg_frame_header_decode(x, 1 << 20, &g), EG_NET_EVERSION);
    memcpy(x, hb, sizeof x); x[8] = 4;
    CHECK_NCODE(eg_frame_header_decode(x, 1 << 20, &g), EG_NET_EFLAGS);
    memcpy(x, hb, sizeof x); x[30] = 1;
    CHECK_NCODE(eg_frame_header_decode(x, 1 << 20, &g), EG_NET_EFLAGS);
    memcpy(x, hb, sizeof x); memset(x + 12, 0xff, 4); /* a request with status -1 */
    CHECK_NCODE(eg_frame_header_decode(x, 1 << 20, &g), EG_NET_EFLAGS);
    x[8] = 1; /* ... is fine on an answer */
    CHECK_NET(eg_frame_header_decode(x, 1 << 20, &g));
    CHECK_EQ_INT(g.status, -1);
    memcpy(x, hb, sizeof x); x[6] = EG_OP_COUNT;
    CHECK_NCODE(eg_frame_header_decode(x, 1 << 20, &g), EG_NET_EOPCODE);
    memcpy(x, hb, sizeof x); x[6] = 0;
    CHECK_NCODE(eg_frame_header_decode(x, 1 << 20, &g), EG_NET_EOPCODE);
    for (int op = 1; op < EG_OP_COUNT; op++) CHECK(eg_op_name(op) != NULL);
    CHECK(eg_op_name(0) == NULL && eg_op_name(EG_OP_COUNT) == NULL);
}

/* Decode b's body at an 8-aligned address, as the server does. */
static int decode_copy(int op, const unsigned char *p, size_t n, eg_request *r, void **keep)
{
    void *a = malloc(n ? n : 1);
    memcpy(a, p, n);
    int rc = eg_wire_decode_request(op, a, n, r);
    if (keep) *keep = a;
    else free(a);
    return rc;
}

static void test_roundtrip_every_op(void)
{
    for (int op = 1; op < EG_OP_COUNT; op++) {
        eg_buf b;
        REQUIRE(encode(op, &b) == 0);
        eg_frame_header h;
        CHECK_NET(eg_frame_header_decode(b.data, EG_NET_FRAME_MAX, &h));
        CHECK_EQ_INT(h.opcode, op);
        CHECK_EQ_INT(h.request_id, 1000 + (uint64_t)op);
        CHECK_EQ_INT(h.body_len, b.len - EG_NET_HEADER_BYTES);
        eg_request want, got;
        sample(op, &want);
        void *keep;
        int rc = decode_copy(op, b.data + EG_NET_HEADER_BYTES, h.body_len, &got, &keep);
        if (rc) fprintf(stderr, "  %s: %s\n", eg_op_name(op), eg_net_last_error());
        CHECK_EQ_INT(rc, 0);
        CHECK(!strcmp(got.name, want.name) && !strcmp(got.name2, want.name2));
        CHECK_EQ_INT(got.handle, want.handle);
        CHECK_EQ_INT(got.count, want.count);
        if (op == EG_OP_HELLO)
            CHECK(got.min_version == 1 && got.max_version == 3 && got.secret_len == 7 && !memcmp(got.secret, "s3cret!", 7));
        if (op == EG_OP_CREATE)
            CHECK(got.config.n_q_heads == 4 && got.config.head_dim_v == 4 && !strcmp(got.config.fingerprint, "model-x") &&
                  got.config.codec == shape.codec);
        if (op == EG_OP_OPEN) CHECK(got.has_fingerprint == 1 && !strcmp(got.fingerprint, "model-x"));
        if (op == EG_OP_FETCH) CHECK(got.layer == 1 && got.segment == 4 && got.want == 3);
        if (op == EG_OP_ROUTER_RESET) CHECK(got.layer == 1);
        if (op == EG_OP_ROUTER_TRAIN) {
            const eg_router_train_req *t = &got.train;
            CHECK(t->layer == 1 && t->n_queries == 2 && got.n_q_heads == 4 && got.head_dim_k == 8);
            CHECK(t->pos[1] == 9 && t->steps == 50 && t->lr == 0.02f && t->recent_tokens == 64);
            CHECK(t->n_sink_segments == 1 && t->scale == 0 && t->q == NULL);
            CHECK(!memcmp(got.q_raw, qbuf, sizeof qbuf) && (uintptr_t)t->pos % 8 == 0);
        }
        if (op == EG_OP_APPEND) {
            CHECK(got.append.n_tokens == 3 && got.append.layer == -1 && got.append.tag == 5);
            CHECK(got.append.token_ids && got.append.token_ids[2] == 9);
            CHECK(got.keys_bytes == sizeof kbuf && got.values_bytes == sizeof vbuf);
            CHECK(!memcmp(got.append.keys, kbuf, sizeof kbuf) && !memcmp(got.append.values, vbuf, sizeof vbuf));
        }
        if (op == EG_OP_ATTEND || op == EG_OP_SELECT) {
            const eg_attend_req *q = &got.attend;
            CHECK(q->layer == 1 && q->n_queries == 2 && got.n_q_heads == 4 && got.head_dim_k == 8);
            CHECK(q->pos[1] == 9 && q->n_tags == 3 && q->tags[2] == 3 && q->include_self == 1);
            CHECK(q->budget_tokens == 512 && q->max_lost == 0.05 && q->router == EG_ROUTER_CENTROID);
            CHECK(!memcmp(got.q_raw, qbuf, sizeof qbuf));
            CHECK_EQ_INT(got.dense, op == EG_OP_ATTEND);
            CHECK_EQ_INT(q->aggregate, op == EG_OP_ATTEND ? EG_ROUTE_AGG_MASS : EG_ROUTE_AGG_MAX);
            if (op == EG_OP_ATTEND) CHECK(got.n_oracle == 6 && q->oracle_mass[5] == 0.6f);
            CHECK((uintptr_t)q->pos % 8 == 0 && (uintptr_t)got.q_raw % 4 == 0);
        }
        free(keep);
        eg_buf_free(&b);
    }
}

/* Every proper prefix of a body and the body with a byte more is refused. */
static void test_truncated_and_extended(void)
{
    for (int op = 1; op < EG_OP_COUNT; op++) {
        eg_buf b;
        REQUIRE(encode(op, &b) == 0);
        size_t n = b.len - EG_NET_HEADER_BYTES;
        int accepted = 0;
        for (size_t cut = 0; cut < n; cut++) {
            eg_request r;
            accepted += decode_copy(op, b.data + EG_NET_HEADER_BYTES, cut, &r, NULL) == 0;
        }
        /* an empty VERIFY or LIST body is not a prefix that parses: each needs its string length */
        CHECK_EQ_INT(accepted, 0);
        unsigned char *ext = calloc(n + 1, 1);
        memcpy(ext, b.data + EG_NET_HEADER_BYTES, n);
        eg_request r;
        CHECK(decode_copy(op, ext, n + 1, &r, NULL) != 0);
        free(ext);
        eg_buf_free(&b);
    }
    /* misaligned array bodies are refused rather than read unaligned */
    eg_buf b;
    REQUIRE(encode(EG_OP_ATTEND, &b) == 0);
    unsigned char *odd = malloc(b.len + 1);
    memcpy(odd + 1, b.data + EG_NET_HEADER_BYTES, b.len - EG_NET_HEADER_BYTES);
    eg_request r;
    CHECK_NCODE(eg_wire_decode_request(EG_OP_ATTEND, odd + 1, b.len - EG_NET_HEADER_BYTES, &r), EG_NET_EINVAL);
    free(odd);
    /* rank_max and rank_mass (flags bits 3 and 4, at body offset 24) together are refused */
    unsigned char *both = malloc(b.len);
    memcpy(both, b.data + EG_NET_HEADER_BYTES, b.len - EG_NET_HEADER_BYTES);
    both[24] |= 8 | 16;
    CHECK(decode_copy(EG_OP_ATTEND, both, b.len - EG_NET_HEADER_BYTES, &r, NULL) == EG_NET_EBODY);
    free(both);
    eg_buf_free(&b);
    /* and an aggregate out of range is not encoded */
    eg_request bad;
    sample(EG_OP_SELECT, &bad);
    bad.attend.aggregate = 3;
    eg_buf_init(&b);
    CHECK_NCODE(eg_wire_encode_request(&b, &bad, 1, &shape), EG_NET_EINVAL);
    eg_buf_free(&b);
}

static size_t valid_stream(unsigned char *out, size_t cap)
{
    size_t n = 0;
    for (int op = 1; op < EG_OP_COUNT; op++) {
        eg_buf b;
        if (encode(op, &b) == 0 && n + b.len <= cap) {
            memcpy(out + n, b.data, b.len);
            n += b.len;
        }
        eg_buf_free(&b);
    }
    return n;
}

static void test_corpus_replay(void)
{
    DIR *d = opendir(corpus_dir);
    if (!d) {
        fprintf(stderr, "  corpus %s missing\n", corpus_dir);
        CHECK(0);
        return;
    }
    struct dirent *de;
    int files = 0;
    static unsigned char buf[1 << 20];
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.') continue;
        char p[2048];
        snprintf(p, sizeof p, "%s/%s", corpus_dir, de->d_name);
        FILE *f = fopen(p, "rb");
        if (!f) continue;
        size_t n = fread(buf, 1, sizeof buf, f);
        fclose(f);
        int frames = eg_wire_fuzz_stream(buf, n);
        CHECK(frames >= 0 && (size_t)frames <= n / EG_NET_HEADER_BYTES);
        files++;
    }
    closedir(d);
    fprintf(stderr, "  %d corpus files replayed\n", files);
    CHECK(files >= EG_OP_COUNT - 1);
    /* the valid stream parses as exactly one frame per opcode */
    size_t n = valid_stream(buf, sizeof buf);
    CHECK_EQ_INT(eg_wire_fuzz_stream(buf, n), EG_OP_COUNT - 1);
}

static void test_mutations(void)
{
    static unsigned char base[1 << 16], m[1 << 16];
    size_t n = valid_stream(base, sizeof base);
    uint64_t s = 12345;
    int rounds = tu_slow() ? 3000 : 30000;
    long frames = 0;
    for (int i = 0; i < rounds; i++) {
        memcpy(m, base, n);
        size_t len = n;
        int edits = 1 + (int)(tu_rand(&s) % 8);
        for (int e = 0; e < edits; e++) {
            size_t at = tu_rand(&s) % len;
            switch (tu_rand(&s) % 4) {
            case 0: m[at] = (unsigned char)tu_rand(&s); break;        /* a random byte */
            case 1: m[at] ^= (unsigned char)(1u << (tu_rand(&s) % 8)); break;
            case 2: len = at + 1; break;                               /* cut the stream */
            default: memset(m + at, 0xff, len - at < 4 ? len - at : 4); break; /* huge lengths */
            }
        }
        int f = eg_wire_fuzz_stream(m, len);
        CHECK(f >= 0);
        frames += f;
    }
    fprintf(stderr, "  %d mutated streams, %ld frames parsed\n", rounds, frames);
}

static int write_corpus(const char *dir)
{
    mkdir(dir, 0755);
    for (int op = 1; op < EG_OP_COUNT; op++) {
        eg_buf b;
        if (encode(op, &b)) return 1;
        char p[1024];
        snprintf(p, sizeof p, "%s/seed-%s", dir, eg_op_name(op));
        FILE *f = fopen(p, "wb");
        if (!f) return 1;
        fwrite(b.data, 1, b.len, f);
        fclose(f);
        eg_buf_free(&b);
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 3 && !strcmp(argv[1], "--write-corpus")) return write_corpus(argv[2]);
    /* the corpus is in the source tree: ../../tests/fuzz/corpus from build/tests */
    snprintf(corpus_dir, sizeof corpus_dir, "%s", argv[0]);
    char *slash = strrchr(corpus_dir, '/');
    if (slash) *slash = 0;
    size_t l = strlen(corpus_dir);
    snprintf(corpus_dir + l, sizeof corpus_dir - l, "/../../tests/fuzz/corpus");
    TEST_RUN(test_header);
    TEST_RUN(test_roundtrip_every_op);
    TEST_RUN(test_truncated_and_extended);
    TEST_RUN(test_corpus_replay);
    TEST_RUN(test_mutations);
    TEST_END();
}
