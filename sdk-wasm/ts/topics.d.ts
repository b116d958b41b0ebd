// ---------------------------------------------------------------------------
// Typed topic maps (`new PromClient<Topics>(url)`): which topics a pattern
// matches, computed by the compiler from the topic names, with the rules
// of semantics.md §1 (`*` one segment, `**` zero or more, anywhere).
// Appended to the generated declarations like ts/api.d.ts.

/**
 * The default of `PromClient<Topics>`: no topic map. Any topic is
 * accepted; payload types are given per call (`publish<T>`,
 * `subscribe<T>`). Only a marker: never a real map.
 */
export interface AnyTopics {
  readonly "promhub:any-topics": true;
}

/** The topic names of a topic map. */
export type TopicName<Topics> = Extract<keyof Topics, string>;

/** `"a.b.c"` → `["a", "b", "c"]`. */
export type TopicSegments<S extends string> = S extends `${infer Head}.${infer Rest}`
  ? [Head, ...TopicSegments<Rest>]
  : [S];

/** Whether the pattern segments `P` match the topic segments `T`. */
export type SegmentsMatch<P extends string[], T extends string[]> = P extends [
  infer Head extends string,
  ...infer Rest extends string[],
]
  ? Head extends "**"
    ? SegmentsMatch<Rest, T> extends true
      ? true
      : T extends [string, ...infer TopicRest extends string[]]
        ? SegmentsMatch<P, TopicRest>
        : false
    : T extends [infer Topic extends string, ...infer TopicRest extends string[]]
      ? Head extends "*" | Topic
        ? SegmentsMatch<Rest, TopicRest>
        : false
      : false
  : T extends []
    ? true
    : false;

/** Whether `pattern` matches `topic` (`"orders.*"`, `"orders.created"` → true). */
export type PatternMatches<Pattern extends string, Topic extends string> = SegmentsMatch<
  TopicSegments<Pattern>,
  TopicSegments<Topic>
>;

/**
 * The topics of `Topics` that `Pattern` matches (every topic when the
 * pattern is only known as `string`).
 */
export type MatchingTopics<Topics, Pattern extends string> = string extends Pattern
  ? TopicName<Topics>
  : {
      [K in TopicName<Topics>]: PatternMatches<Pattern, K> extends true ? K : never;
    }[TopicName<Topics>];

/**
 * The event a handler of a typed subscription receives: one member per
 * matching topic, so `event.topic === "orders.created"` narrows
 * `event.payload` to that topic's type.
 */
export type TopicEvent<Topics, K extends TopicName<Topics>> = K extends unknown
  ? PromEvent<Topics[K]> & { topic: K }
  : never;

/** The union of the payload types of the topics `Pattern` matches. */
export type PatternPayload<Topics, Pattern extends string> = Topics[MatchingTopics<Topics, Pattern>];

/** A handler for the events of the topics `Pattern` matches. */
export type TopicHandler<Topics, Pattern extends string> = (
  event: TopicEvent<Topics, MatchingTopics<Topics, Pattern>>,
  ctx: DeliveryContext,
) => unknown;

/**
 * `Pattern` itself when it matches a topic of the map; otherwise a type
 * no string has, whose name says why (a compile error at the call).
 */
export type CheckedPattern<Topics, Pattern extends string> = [MatchingTopics<Topics, Pattern>] extends [never]
  ? `no topic of the topic map matches ${Pattern}`
  : Pattern;
