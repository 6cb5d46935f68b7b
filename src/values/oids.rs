//! Type oids of PostgreSQL's built-in types, as in `pg_type.dat` (PostgreSQL 15).
//!
//! Each line names a type and its array type; the names are PostgreSQL's `typname` in
//! upper case, with `_ARRAY` for the array type (PostgreSQL spells that one `_typname`).
//! The same table generates the array-element lookup behind [`super::element_type`] and [`is_builtin`], so a type added here is
//! known to the whole module at once. Oids below 10000 are fixed across installations;
//! everything else (enums, domains, composites, extension types) is assigned at creation
//! time and can only be looked up in the catalog, which this pure module never does.

/// Declares `NAME = oid, NAME_ARRAY = array_oid;` pairs and the lookups built from them.
macro_rules! pg_types {
    ($($name:ident = $oid:literal, $array:ident = $array_oid:literal;)*) => {
        // The catalog is complete on purpose, so a binary that names only some types must
        // not be warned about the rest.
        $(
            #[doc = concat!("`", stringify!($name), "`: oid ", stringify!($oid), ".")]
            #[allow(dead_code)]
            pub const $name: u32 = $oid;
            #[doc = concat!("`", stringify!($name), "[]`: oid ", stringify!($array_oid), ".")]
            #[allow(dead_code)]
            pub const $array: u32 = $array_oid;
        )*

        /// The element type of a built-in array type, or `None` for any other oid.
        pub(super) const fn array_element(array_oid: u32) -> Option<u32> {
            match array_oid {
                $($array_oid => Some($oid),)*
                _ => None,
            }
        }

        /// Whether `type_oid` is one of the built-in types (scalar or array) named here.
        pub const fn is_builtin(type_oid: u32) -> bool {
            matches!(type_oid, UNKNOWN $(| $oid | $array_oid)*)
        }
    };
}

/// `unknown`: oid 705, the type of untyped literals; it has no array type.
pub const UNKNOWN: u32 = 705;

pg_types! {
    BOOL = 16, BOOL_ARRAY = 1000;
    BYTEA = 17, BYTEA_ARRAY = 1001;
    CHAR = 18, CHAR_ARRAY = 1002;
    NAME = 19, NAME_ARRAY = 1003;
    INT8 = 20, INT8_ARRAY = 1016;
    INT2 = 21, INT2_ARRAY = 1005;
    INT2VECTOR = 22, INT2VECTOR_ARRAY = 1006;
    INT4 = 23, INT4_ARRAY = 1007;
    REGPROC = 24, REGPROC_ARRAY = 1008;
    TEXT = 25, TEXT_ARRAY = 1009;
    OID = 26, OID_ARRAY = 1028;
    TID = 27, TID_ARRAY = 1010;
    XID = 28, XID_ARRAY = 1011;
    CID = 29, CID_ARRAY = 1012;
    OIDVECTOR = 30, OIDVECTOR_ARRAY = 1013;
    JSON = 114, JSON_ARRAY = 199;
    XML = 142, XML_ARRAY = 143;
    POINT = 600, POINT_ARRAY = 1017;
    LSEG = 601, LSEG_ARRAY = 1018;
    PATH = 602, PATH_ARRAY = 1019;
    BOX = 603, BOX_ARRAY = 1020;
    POLYGON = 604, POLYGON_ARRAY = 1027;
    LINE = 628, LINE_ARRAY = 629;
    CIDR = 650, CIDR_ARRAY = 651;
    FLOAT4 = 700, FLOAT4_ARRAY = 1021;
    FLOAT8 = 701, FLOAT8_ARRAY = 1022;
    CIRCLE = 718, CIRCLE_ARRAY = 719;
    MACADDR8 = 774, MACADDR8_ARRAY = 775;
    MONEY = 790, MONEY_ARRAY = 791;
    MACADDR = 829, MACADDR_ARRAY = 1040;
    INET = 869, INET_ARRAY = 1041;
    ACLITEM = 1033, ACLITEM_ARRAY = 1034;
    BPCHAR = 1042, BPCHAR_ARRAY = 1014;
    VARCHAR = 1043, VARCHAR_ARRAY = 1015;
    DATE = 1082, DATE_ARRAY = 1182;
    TIME = 1083, TIME_ARRAY = 1183;
    TIMESTAMP = 1114, TIMESTAMP_ARRAY = 1115;
    TIMESTAMPTZ = 1184, TIMESTAMPTZ_ARRAY = 1185;
    INTERVAL = 1186, INTERVAL_ARRAY = 1187;
    TIMETZ = 1266, TIMETZ_ARRAY = 1270;
    BIT = 1560, BIT_ARRAY = 1561;
    VARBIT = 1562, VARBIT_ARRAY = 1563;
    NUMERIC = 1700, NUMERIC_ARRAY = 1231;
    REFCURSOR = 1790, REFCURSOR_ARRAY = 2201;
    REGPROCEDURE = 2202, REGPROCEDURE_ARRAY = 2207;
    REGOPER = 2203, REGOPER_ARRAY = 2208;
    REGOPERATOR = 2204, REGOPERATOR_ARRAY = 2209;
    REGCLASS = 2205, REGCLASS_ARRAY = 2210;
    REGTYPE = 2206, REGTYPE_ARRAY = 2211;
    CSTRING = 2275, CSTRING_ARRAY = 1263;
    UUID = 2950, UUID_ARRAY = 2951;
    TXID_SNAPSHOT = 2970, TXID_SNAPSHOT_ARRAY = 2949;
    PG_LSN = 3220, PG_LSN_ARRAY = 3221;
    TSVECTOR = 3614, TSVECTOR_ARRAY = 3643;
    TSQUERY = 3615, TSQUERY_ARRAY = 3645;
    GTSVECTOR = 3642, GTSVECTOR_ARRAY = 3644;
    REGCONFIG = 3734, REGCONFIG_ARRAY = 3735;
    REGDICTIONARY = 3769, REGDICTIONARY_ARRAY = 3770;
    JSONB = 3802, JSONB_ARRAY = 3807;
    INT4RANGE = 3904, INT4RANGE_ARRAY = 3905;
    NUMRANGE = 3906, NUMRANGE_ARRAY = 3907;
    TSRANGE = 3908, TSRANGE_ARRAY = 3909;
    TSTZRANGE = 3910, TSTZRANGE_ARRAY = 3911;
    DATERANGE = 3912, DATERANGE_ARRAY = 3913;
    INT8RANGE = 3926, INT8RANGE_ARRAY = 3927;
    JSONPATH = 4072, JSONPATH_ARRAY = 4073;
    REGNAMESPACE = 4089, REGNAMESPACE_ARRAY = 4090;
    REGROLE = 4096, REGROLE_ARRAY = 4097;
    REGCOLLATION = 4191, REGCOLLATION_ARRAY = 4192;
    INT4MULTIRANGE = 4451, INT4MULTIRANGE_ARRAY = 6150;
    NUMMULTIRANGE = 4532, NUMMULTIRANGE_ARRAY = 6151;
    TSMULTIRANGE = 4533, TSMULTIRANGE_ARRAY = 6152;
    TSTZMULTIRANGE = 4534, TSTZMULTIRANGE_ARRAY = 6153;
    DATEMULTIRANGE = 4535, DATEMULTIRANGE_ARRAY = 6155;
    INT8MULTIRANGE = 4536, INT8MULTIRANGE_ARRAY = 6157;
    PG_SNAPSHOT = 5038, PG_SNAPSHOT_ARRAY = 5039;
    XID8 = 5069, XID8_ARRAY = 271;
    RECORD = 2249, RECORD_ARRAY = 2287;
}

/// The byte that separates elements in the array text format of `element_oid`.
///
/// Every built-in type uses `,` except `box`, whose own text contains commas
/// (`(1,1),(0,0)`), so `box[]` is written `{(1,1),(0,0);(3,3),(2,2)}`.
pub const fn array_delimiter(element_oid: u32) -> u8 {
    if element_oid == BOX { b';' } else { b',' }
}
